"""Evidence from the model itself: which layer outputs are feature maps, and which one to explain.

One traced forward of one image records every module call -- its output shape, how often the module
ran, which calls run inside a *token mixer* (the innermost module active when scaled dot-product
attention, multi-head attention or a softmax over a 3-D+ score tensor runs: an attention block) --
and the widths of the residual stream (outputs of mixers and of the modules around them). From that:

- attention internals (anything computed inside a mixer: q/k/v, fused qkv, per-head tensors) and
  MLP hidden widths (token tensors whose width is not a stream width at that grid) are never maps;
- ``auto`` picks the last map-like output on whose grid positions the top-1 score depends, among
  modules called once and not pooling; when another such output feeds the score without passing
  through it (parallel branches), the rule cannot decide and the error lists them;
- a reading that shape alone leaves open (nchw or nhwc, how many prefix tokens) is settled by the
  shapes at a second input size when the model accepts one;
- token grids are checked to be raster grids: changing the image inside cell (i, j) must change the
  tokens around grid cell (i, j) (Hiera's unrolled tokens fail this).

Results are cached per model and input size; the probe holds no tensors afterwards.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import CamkitError, InputError, LayerNotFoundError
from .hooks import Hooks
from .layers import POOLING
from .layout import Layout, describe_failure, patch_size, readings
from .outputs import probe_score, to_logits
from .tasks import search_scope

_ATTENTION = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}


@dataclass(eq=False)
class Call:
    """One module call of the traced forward."""

    name: str
    module: nn.Module
    parent: Optional["Call"]
    order: int = -1  # position in the order calls ended
    shape: Optional[torch.Size] = None
    out: Any = field(default=None, repr=False)  # the output tensor, only while the probe runs
    mixer: bool = False
    passthrough: bool = False  # returned its input tensor itself, unchanged (Identity, eval Dropout)
    version: int = -1  # the input's version counter when the call started (an in-place op bumps it)

    @property
    def internal(self) -> bool:
        """Computed inside a token mixer (an attention internal)."""
        p = self.parent
        while p is not None:
            if p.mixer:
                return True
            p = p.parent
        return False


class _MixerMode(TorchFunctionMode):
    """Marks the innermost running module as a token mixer when attention runs inside it."""

    def __init__(self, stack: list[Call]) -> None:
        super().__init__()
        self.stack = stack

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        mixing = func in _ATTENTION or (func in _SOFTMAX and _over_last_dim(args, kwargs))
        if mixing and len(self.stack) > 1:  # the root model itself is never "a block"
            self.stack[-1].mixer = True
        return func(*args, **kwargs)


def _over_last_dim(args: tuple, kwargs: dict) -> bool:
    """A softmax along the last dim of a 3-D+ tensor: attention weights over keys (a softmax over
    classes, dim 1 of a segmentation output, is not token mixing)."""
    t = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(t, torch.Tensor) or t.dim() < 3 or not isinstance(dim, int):
        return False
    return dim in (-1, t.dim() - 1)


def _version(args: Any) -> int:
    """The version counter of a call's first argument (-1: not a tensor, or an inference tensor)."""
    t = args[0] if args else None
    try:
        return int(t._version) if isinstance(t, torch.Tensor) else -1
    except RuntimeError:
        return -1


def trace(model: nn.Module, x: torch.Tensor, keep: bool = True) -> tuple[list[Call], Any]:
    """Run ``model(x)`` recording every module call (ended order), its output shape and, with
    ``keep``, the output itself; returns the calls and the model output. Autograd follows the
    caller's grad mode."""
    stack: list[Call] = []
    calls: list[Call] = []

    def pre(name: str):
        def hook(m: nn.Module, args: Any) -> None:
            stack.append(Call(name, m, stack[-1] if stack else None, version=_version(args)))
        return hook

    def post(m: nn.Module, args: Any, out: Any) -> None:
        while stack and stack[-1].module is not m:
            stack.pop()  # a call that raised and was caught by the model
        if not stack:
            return
        call = stack.pop()
        call.order = len(calls)
        call.passthrough = bool(args) and args[0] is out and _version(args) == call.version != -1
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            call.out, call.shape = (out if keep else None), out.shape
        calls.append(call)

    with Hooks() as hooks:  # they fire for this call only, not for other threads using the model
        for name, m in model.named_modules():
            hooks.before_forward(m, pre(name))
            hooks.on_forward(m, post)
        with _MixerMode(stack):
            output = model(x)
    return calls, output


@dataclass
class Probe:
    """What one traced forward says about every module of a model at one input size."""

    input_hw: tuple[int, int]
    patch: Optional[tuple[int, int]]
    calls: list[Call]
    counts: dict[int, int]  # id(module) -> number of calls
    stream: dict[tuple[int, ...], set[int]]  # grid shape (without batch and width) -> residual widths
    choice: Optional[str] = None  # the auto layer, once chosen
    second: Optional[dict[int, list[torch.Size]]] = None  # id(module) -> shapes at the second size
    second_hw: Optional[tuple[int, int]] = None
    raster: dict[tuple[int, Layout], bool] = field(default_factory=dict)

    def calls_of(self, module: nn.Module) -> list[Call]:
        return [c for c in self.calls if c.module is module]

    def hidden(self, call: Call, layout: Layout) -> bool:
        """A token / channels-last tensor whose width is not a residual-stream width at its grid."""
        if layout.kind not in ("tokens", "nhwc") or call.shape is None:
            return False
        key = _grid_key(call.shape, layout)
        widths = self.stream.get(key)
        return widths is not None and int(call.shape[-1]) not in widths


def _grid_key(shape: torch.Size, layout: Layout) -> tuple[int, ...]:
    if layout.kind == "tokens" and layout.seq_first:
        return (int(shape[0]),)
    return tuple(int(s) for s in shape[1:-1])


def _summarise(model: nn.Module, calls: list[Call], input_hw: tuple[int, int]) -> Probe:
    counts: dict[int, int] = {}
    for c in calls:
        counts[id(c.module)] = counts.get(id(c.module), 0) + 1
    around: set[int] = set()  # calls that are mixers or contain one
    for c in calls:
        if c.mixer:
            p: Optional[Call] = c
            while p is not None and id(p) not in around:
                around.add(id(p))
                p = p.parent
    stream: dict[tuple[int, ...], set[int]] = {}
    patch = patch_size(model)
    for c in calls:
        if id(c) in around and c.parent is not None and c.shape is not None:
            for r in readings(torch.empty(c.shape, device="meta"), 1, input_hw, patch):
                if r.kind in ("tokens", "nhwc"):
                    stream.setdefault(_grid_key(c.shape, r), set()).add(int(c.shape[-1]))
    return Probe(input_hw, patch, calls, counts, stream)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], Probe]]" = weakref.WeakKeyDictionary()


def probe(model: nn.Module, x: torch.Tensor, choose: bool = False) -> Probe:
    """The (cached) probe of ``model`` at ``x``'s size, on its first image; ``choose`` also runs the
    auto-layer rule (one backward). Call with the model in the mode it will be explained in."""
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    per_model = _CACHE.setdefault(model, {})
    p = per_model.get(hw)
    if p is not None and (p.choice is not None or not choose):
        return p
    x1 = x[:1].detach()
    if choose:
        with torch.enable_grad():
            calls, output = trace(model, x1.clone().requires_grad_(True))
            p = _summarise(model, calls, hw)
            p.choice = _choose(model, p, output)
    else:
        with torch.no_grad():
            calls, _ = trace(model, x1, keep=False)
            p = _summarise(model, calls, hw)
    for c in p.calls:
        c.out = None  # drop the tensors (and the graph)
    per_model[hw] = p
    return p


def _candidates(p: Probe) -> list[tuple[Call, Layout]]:
    pooled = {id(c.out) for c in p.calls if c.out is not None and isinstance(c.module, POOLING)}
    out = []
    for c in p.calls:
        if c.out is None or c.parent is None or not c.out.requires_grad:
            continue
        if id(c.out) in pooled or p.counts[id(c.module)] != 1 or c.internal:  # a block ending in pooling too
            continue
        rs = readings(c.out, 1, p.input_hw, p.patch)
        if rs and not p.hidden(c, rs[0]):
            out.append((c, rs[0]))
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, a (nested) tuple / list / dict, or an object with attributes."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    if hasattr(obj, "__dict__"):
        return [t for v in vars(obj).values() for t in _tensors(v)]
    return []


def _upstream(node: Any) -> set[Any]:
    """Every autograd node ``node`` depends on."""
    seen: set[Any] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        todo.extend(f for f, _ in n.next_functions)
    return seen


def _choose(model: nn.Module, p: Probe, output: Any) -> str:
    try:
        score = to_logits(output).reshape(1, -1).max()
    except CamkitError:  # no single score tensor: a scalar that depends on every output tensor
        try:
            score = probe_score(output)
        except CamkitError as e:
            raise LayerNotFoundError(
                f"layer='auto' needs a score to find the layer the prediction depends on, but the output of "
                f"{type(model).__name__} has none ({e}); pass layer='name'"
            ) from None
    returned = {id(t) for t in _tensors(output)}  # the prediction itself (segmentation logits) is no feature map
    scope = search_scope(model)  # a segmenter's backbone, not its decoder
    cands = [(c, r) for c, r in _candidates(p) if id(c.out) not in returned
             and (scope is None or c.name.startswith(scope + "."))]
    if not cands or not score.requires_grad:
        raise LayerNotFoundError(
            f"found no layer with a spatial output in {type(model).__name__} on which the score depends; pass layer='name'"
        )
    grads = torch.autograd.grad(score, [c.out for c, _ in cands], allow_unused=True, retain_graph=True)
    live = [(c, r) for (c, r), g in zip(cands, grads) if g is not None and r(g).abs().sum() > 0]
    if not live:
        raise LayerNotFoundError(
            f"the top-1 score of {type(model).__name__} has zero gradient at every spatial layer, so no layer "
            "can be chosen automatically (is the classifier initialised to zeros, as torchvision's ViT head "
            "is?); pass layer='name'"
        )
    outermost: dict[int, Call] = {}  # one entry per output tensor: a block and its last child return one
    for c, _ in live:  # calls are in end order: the enclosing module comes last
        if not c.passthrough or id(c.out) not in outermost:  # name it after a module that computed it
            outermost[id(c.out)] = c
    groups = sorted(outermost.values(), key=lambda c: c.order)
    chosen = groups[-1]
    above = _upstream(chosen.out.grad_fn)
    parallel = []  # outputs feeding the score past the chosen one, the most downstream of each branch
    for c in reversed(groups[:-1]):
        if c.out.grad_fn not in above:
            parallel.append(c)
            above |= _upstream(c.out.grad_fn)
    if parallel:
        names = [c.name for c in reversed(parallel[:4])] + [chosen.name]
        raise LayerNotFoundError(
            f"layer='auto' cannot decide for {type(model).__name__}: the score depends on several layers that "
            f"do not feed each other ({', '.join(repr(n) for n in names)}); pass layer='name' or a list of them"
        )
    return chosen.name


# -------------------------------------------------------------------------------- settling readings

def _second_size(model: nn.Module, x: torch.Tensor, p: Probe) -> None:
    """Shapes of every module call at a larger, non-square input (once; nothing if the model refuses it)."""
    if p.second is not None:
        return
    step = max(32, p.patch[0] if p.patch else 0)
    hw2 = (p.input_hw[0] + step, p.input_hw[1] + 2 * step)
    p.second, p.second_hw = {}, hw2
    x2 = F.interpolate(x[:1].detach(), size=hw2, mode="bilinear", align_corners=False)
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


def _output_of(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module``'s first call in ``model(x)`` (no grad); the rest of the forward is skipped."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        got.append(out)
        raise _Stop

    try:
        with Hooks() as hooks, torch.no_grad():
            hooks.on_forward(module, hook)
            model(x)
    except _Stop:
        pass
    return got[0]


def _is_raster(model: nn.Module, module: nn.Module, layout: Layout, x: torch.Tensor) -> bool:
    """Whether a token grid is a raster grid of the image: changing the image inside cell (i, j) must
    change the layer output around grid cell (i, j).

    One batched forward: the image with each of a spread of probe cells inverted (``1 - x`` there),
    plus the image itself. Per probe cell, the centre of the squared change over the grid; a cell
    whose change is spread evenly (peak below twice the mean: global mixing, no local evidence) does
    not count. The grid fails when at least half of the probe cells are conclusive and their median
    distance (in cells) from their own cell exceeds ``max(1.5, 0.15 * max(h, w))``: convolutions and
    attention blur a raster grid's change around the cell, an unrolled order (Hiera) moves it away.
    """
    h, w = layout.h, layout.w
    if h < 3 and w < 3:
        return True
    cells = sorted({(0, w - 1), (h - 1, 0), (h // 2, w // 2), (h // 3, 2 * w // 3), (2 * h // 3, w // 4)})
    hh, ww = int(x.shape[-2]), int(x.shape[-1])
    xs = x[:1].detach().repeat(len(cells) + 1, 1, 1, 1)
    for n, (i, j) in enumerate(cells, start=1):
        rows = slice(i * hh // h, max((i + 1) * hh // h, i * hh // h + 1))
        cols = slice(j * ww // w, max((j + 1) * ww // w, j * ww // w + 1))
        xs[n, :, rows, cols] = 1 - xs[n, :, rows, cols]
    grid = layout(_output_of(model, module, xs)).float()
    change = (grid[1:] - grid[:1]).square().sum(1)  # (cells, h, w)
    ys = torch.arange(h, dtype=torch.float32, device=change.device)[:, None]
    xs_ = torch.arange(w, dtype=torch.float32, device=change.device)[None, :]
    distances = []
    for (i, j), c in zip(cells, change):
        if float(c.max()) < 2 * float(c.mean()):
            continue
        weight = c.square() / c.square().sum()
        cy, cx = float((weight * ys).sum()), float((weight * xs_).sum())
        distances.append(max(abs(cy - i), abs(cx - j)))
    if len(distances) * 2 < len(cells):
        return True  # no local evidence either way: the shape's reading stands
    return sorted(distances)[len(distances) // 2] <= max(1.5, 0.15 * max(h, w))


def settle(model: nn.Module, module: nn.Module, name: str, t: torch.Tensor, x: torch.Tensor,
           options: list[Layout]) -> Layout:
    """The one reading of layer output ``t`` that the model's evidence supports, or a clear error."""
    p = probe(model, x)
    calls = p.calls_of(module)
    if calls and calls[0].internal:
        raise InputError(
            f"layer {name!r} (shape {tuple(t.shape)}) is computed inside the attention block "
            f"{_mixer_name(calls[0])!r}: an attention internal (queries, keys, values, heads), not a feature "
            "map. Explain the block's input norm or output instead (layer='auto' picks it), or force "
            "layout='tokens' if you really mean it"
        )
    if calls and p.hidden(calls[0], options[0]):
        widths = sorted(p.stream.get(_grid_key(calls[0].shape, options[0]), set()))  # type: ignore[arg-type]
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
    if layout.kind == "tokens":  # a flattened sequence may be in any order; (B, h, w, C) keeps its axes
        key = (id(module), layout)
        if key not in p.raster:
            p.raster[key] = _is_raster(model, module, layout, x)
        if not p.raster[key]:
            raise InputError(
                f"layer {name!r} outputs {tuple(t.shape)}: its tokens are not in raster order (changing the image "
                f"inside cell (i, j) changes the tokens around another grid cell than (i, j), as with Hiera's "
                "unrolled tokens), so no grid can be read from it; explain a layer whose tokens are a raster grid "
                "(e.g. the last stage) or pass reshape=callable(tensor) -> (B, C, h, w)"
            )
    return layout


def _mixer_name(call: Call) -> str:
    p = call.parent
    while p is not None and not p.mixer:
        p = p.parent
    return p.name if p is not None else "?"


def no_map(t: torch.Tensor, name: str, batch: int, input_hw: tuple[int, int]) -> InputError:
    """The error for a layer output that has no reading at all."""
    return InputError(describe_failure(t, name, batch, input_hw))
