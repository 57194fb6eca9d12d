"""Reading one layer's output as a feature grid: the shape's readings (`.layout`), settled by
the model's evidence (`.probe`) where shape alone is not proof.

- attention internals and MLP hidden widths are refused (see `.probe`);
- a reading that shape alone leaves open (nchw or nhwc, how many prefix tokens) is settled by the
  shapes at a second input size when the model accepts one;
- token grids are checked to be raster grids: changing the image inside cell (i, j) must change the
  tokens around grid cell (i, j) (Hiera's unrolled tokens fail this).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hooks import Hooks
from ..core.keys import select, split_key
from ..core.postprocess import MODES
from ..core.region import InputRegion
from ..errors import InputError
from .layout import Layout, custom, describe_failure, readings
from .probe import Probe, grid_key, probe
from .trace import ModuleCall, trace

Reshape = Callable[[torch.Tensor], torch.Tensor]


def read_layer(model: nn.Module, module: nn.Module, name: str, a: torch.Tensor, x: torch.Tensor,
               patch: Optional[tuple[int, ...]], kind: Optional[str] = None, reshape: Optional[Reshape] = None,
               region: Optional[InputRegion] = None) -> Layout:
    """How to read layer ``name``'s output ``a`` as ``(B, C, h, w)`` (``(B, C, t, h, w)`` for a clip or
    volume ``x``): forced by ``reshape`` / ``kind``
    (``"nchw"``, ``"nhwc"``, ``"tokens"``), else from the shape and, where shape alone is not proof,
    the model's evidence. ``region``: the model resizes and pads inside, its layers see an image of
    size ``region.padded``. A shape with no reading is an `InputError` saying what would work."""
    if reshape is not None:
        return custom(reshape, a, name, x.dim() - 2)
    hw = tuple(int(s) for s in x.shape[2:]) if region is None else region.padded
    options = readings(a, x.shape[0], hw, patch, kind=kind)
    if not options:
        raise InputError(describe_failure(a, name, x.shape[0], hw))
    if kind is not None or options[0].kind == "nchw":
        return options[0]
    return settle(model, module, name, a, x, options)


def _second_size(model: nn.Module, x: torch.Tensor, p: Probe) -> None:
    """Shapes of every module call at a larger, non-square input (once; nothing if the model refuses it)."""
    if p.second is not None:
        return
    step = max(32, p.patch[-1] if p.patch else 0)
    hw2 = (*p.input_hw[:-2], p.input_hw[-2] + step, p.input_hw[-1] + 2 * step)  # clips: the same frames
    p.second, p.second_hw = {}, hw2
    x2 = F.interpolate(x[:1].detach(), size=hw2, mode=MODES[len(hw2)], align_corners=False)
    try:
        with torch.no_grad():
            calls, _ = trace(model, x2, keep=False)
    except Exception:
        return  # a model that takes one input size: no evidence from a second one
    for c in calls:
        if c.shape is not None:
            p.second.setdefault(id(c.module), []).append(c.shape)


def _holds_at_second(p: Probe, module: nn.Module, r: Layout, shape1: torch.Size) -> Optional[bool]:
    """Does reading ``r`` also read the module's output at the second size (None: no evidence)?"""
    shapes = (p.second or {}).get(id(module))
    if not shapes or p.second_hw is None or shapes[0] == shape1:
        return None  # not run there, or the model resizes its input internally
    t2 = torch.empty(shapes[0], device="meta")
    for r2 in readings(t2, 1, p.second_hw, p.patch, kind=r.kind):
        same_width = t2.shape[-1 if r.kind != "nchw" else 1] == shape1[-1 if r.kind != "nchw" else 1]
        if r2.prefix == r.prefix and r2.seq_first == r.seq_first and same_width and r2.mismatch < 1.5:
            return True
    return False


class _Stop(Exception):
    pass


def _output_of(model: nn.Module, module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module``'s first call in ``model(x)`` (no grad), the element that ``name``'s keys
    address (``"stages.3[0]"``); the rest of the forward is skipped."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        got.append(select(out, split_key(name)[1], name))
        raise _Stop

    try:
        with Hooks() as hooks, torch.no_grad():
            hooks.on_forward(module, hook)
            model(x)
    except _Stop:
        pass
    return got[0]


def _is_raster(model: nn.Module, module: nn.Module, name: str, layout: Layout, x: torch.Tensor) -> bool:
    """Whether a token grid is a raster grid of the image: changing the image inside cell (i, j) must
    change the layer output around grid cell (i, j) (on a clip: cell (t, i, j), the frames of that
    time cell included).

    One batched forward: the image with each of a spread of probe cells inverted (``1 - x`` there),
    plus the image itself. Per probe cell, the centre of the squared change over the grid; a cell
    whose change is spread evenly (peak below twice the mean: global mixing, no local evidence) does
    not count. The grid fails when at least half of the probe cells are conclusive and their median
    distance (in cells, the largest over the axes) from their own cell exceeds
    ``max(1.5, 0.15 * max(h, w))``: convolutions and attention blur a raster grid's change around the
    cell, an unrolled order (Hiera) moves it away.
    """
    grid = layout.grid
    h, w = grid[-2:]
    if h < 3 and w < 3:
        return True
    n_t = grid[0] if len(grid) == 3 else 1
    spots = [(0, w - 1), (h - 1, 0), (h // 2, w // 2), (h // 3, 2 * w // 3), (2 * h // 3, w // 4)]
    cells = sorted({((k * n_t) // len(spots), i, j) if len(grid) == 3 else (i, j) for k, (i, j) in enumerate(spots)})
    size = tuple(int(s) for s in x.shape[2:])
    xs = x[:1].detach().repeat(len(cells) + 1, *([1] * (x.dim() - 1)))
    for n, cell in enumerate(cells, start=1):
        box = tuple(slice(c * big // g, max((c + 1) * big // g, c * big // g + 1)) for c, big, g in zip(cell, size, grid))
        xs[(n, slice(None), *box)] = 1 - xs[(n, slice(None), *box)]
    out = layout(_output_of(model, module, name, xs)).float()
    change = (out[1:] - out[:1]).square().sum(1)  # (cells, *grid)
    axes = torch.meshgrid(*[torch.arange(g, dtype=torch.float32, device=change.device) for g in grid], indexing="ij")
    distances = []
    for cell, c in zip(cells, change):
        if float(c.max()) < 2 * float(c.mean()):
            continue
        weight = c.square() / c.square().sum()
        distances.append(max(abs(float((weight * ax).sum()) - i) for ax, i in zip(axes, cell)))
    if len(distances) * 2 < len(cells):
        return True  # no local evidence either way: the shape's reading stands
    return sorted(distances)[len(distances) // 2] <= max(1.5, 0.15 * max(h, w))


def settle(model: nn.Module, module: nn.Module, name: str, t: torch.Tensor, x: torch.Tensor,
           options: list[Layout]) -> Layout:
    """The one reading of layer output ``t`` that the model's evidence supports, or a clear error."""
    p = probe(model, x)
    calls = p.calls_of(module)
    if calls and calls[0].internal:
        mixer = _mixer(calls[0])
        instead = " or ".join(repr(n) for n in _around(p, mixer)) or "the block's input norm or output"
        raise InputError(
            f"layer {name!r} (shape {tuple(t.shape)}) is computed inside the attention block "
            f"{mixer.name!r}: an attention internal (queries, keys, values, heads), not a feature "
            f"map. Explain {instead} instead (layer='auto' picks a layer), or force "
            "layout='tokens' if you really mean it"
        )
    if calls and p.hidden(calls[0], options[0]):
        widths = sorted(p.stream.get(grid_key(calls[0].shape, options[0]), set()))  # type: ignore[arg-type]
        raise InputError(
            f"layer {name!r} outputs {tuple(t.shape)}: a width of {t.shape[-1]} where the model's residual stream "
            f"has {widths} (an MLP hidden layer or fused qkv), not a feature map; explain a norm or block output, "
            "or force layout='tokens'"
        )
    layout = options[0]
    ambiguous = len(options) > 1 and (options[0].kind != options[1].kind or
                                      options[0].mismatch >= options[1].mismatch)
    if ambiguous:
        _second_size(model, x, p)
        shape1 = calls[0].shape if calls else None
        held = [r for r in options if shape1 is not None and _holds_at_second(p, module, r, shape1)]
        if held:
            layout = held[0]
        elif options[0].kind != options[1].kind:
            raise InputError(
                f"layer {name!r} outputs {tuple(t.shape)}, which reads as a feature map both as {options[0]} and "
                f"as {options[1]}; pass layout='{options[0].kind}' or layout='{options[1].kind}'"
            )
    if layout.kind == "tokens" and layout.t is not None:  # a clip's tokens: time slowest or fastest
        layout = dataclasses.replace(layout, order=_time_order(model, p, t, x, layout))
    if layout.kind == "tokens":  # a flattened sequence may be in any order; (B, h, w, C) keeps its axes
        key = (id(module), name, layout)
        if key not in p.raster:
            p.raster[key] = _is_raster(model, module, name, layout, x)
        if not p.raster[key]:
            raise InputError(
                f"layer {name!r} outputs {tuple(t.shape)}: its tokens are not in raster order (changing the image "
                f"inside cell (i, j) changes the tokens around another grid cell than (i, j), as with Hiera's "
                "unrolled tokens), so no grid can be read from it; explain a layer whose tokens are a raster grid "
                "(e.g. the last stage) or pass reshape=callable(tensor) -> (B, C, h, w)"
            )
    return layout


def _time_order(model: nn.Module, p: Probe, t: torch.Tensor, x: torch.Tensor, layout: Layout) -> str:
    """Whether a clip's tokens run time slowest (``"thw"``: MViT, VideoMAE) or fastest (``"hwt"``:
    TimeSformer), from the model's evidence: the first module output of the same shape that is not
    computed inside attention -- the patch embedding, before any token mixing -- is read both ways with
    `_is_raster`; ``"hwt"`` only when it alone passes. The order holds for the later layers
    of that token count (blocks keep their tokens in place)."""
    def same(shape: Optional[torch.Size]) -> bool:  # the probe traced one clip: compare all but the batch axis
        keep = [d for d in range(t.dim()) if d != (1 if layout.seq_first else 0)]
        return shape is not None and len(shape) == t.dim() and all(shape[d] == t.shape[d] for d in keep)

    first = next((c for c in p.calls if same(c.shape) and not c.internal and c.parent is not None), None)
    if first is None or first.module is None:
        return "thw"
    key = (id(first.module), "order", layout)
    if key not in p.raster:
        ways = [dataclasses.replace(layout, order=o) for o in ("thw", "hwt")]
        passed = [_is_raster(model, first.module, first.name, w, x) for w in ways]
        p.raster[key] = passed == [False, True]
    return "hwt" if p.raster[key] else "thw"


def _mixer(call: ModuleCall) -> ModuleCall:
    """The attention block that ``call`` runs inside."""
    p = call.parent
    while p is not None and not p.mixer:
        p = p.parent
    assert p is not None
    return p


def _around(p: Probe, mixer: ModuleCall) -> list[str]:
    """Layers next to attention block ``mixer`` whose outputs read as feature maps: the last call that
    ended before the block started (its input norm) and the module around the block."""
    def within(c: Optional[ModuleCall]) -> bool:
        while c is not None and c is not mixer:
            c = c.parent
        return c is mixer

    def readable(c: ModuleCall) -> bool:
        if c.shape is None or c.internal or p.counts[id(c.module)] != 1:
            return False
        rs = readings(torch.empty(c.shape, device="meta"), 1, p.input_hw, p.patch)
        return bool(rs) and not p.hidden(c, rs[0])

    start = min(c.order for c in p.calls if within(c))
    before = [c for c in p.calls if c.order < start and readable(c)]
    names = [before[-1].name] if before else []
    block = mixer.parent
    if block is not None and block.parent is not None and readable(block):
        names.append(block.name)
    return names
