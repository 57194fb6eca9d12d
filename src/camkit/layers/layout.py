"""How to read a layer output as a feature grid ``(B, C, h, w)`` (images) or ``(B, C, t, h, w)``
(clips and volumes), from the shape evidence alone.

A layer output is a feature map only if its grid is consistent with the input: ``(h, w)`` must be
the input size ``(H, W)`` divided by one stride ``s`` (up to a little padding), the same ``s`` on
both axes. On a clip / volume ``(B, C, T, H, W)`` the grid's time (depth) axis has its own stride
(video networks downsample time less than space, often not at all): ``1 <= t <= T`` (plus padding).
Three layouts are read:

- ``nchw``: ``(B, C, h, w)``, PyTorch's convolution layout, and ``(B, C, t, h, w)`` (NCTHW, ``Conv3d``);
- ``nhwc``: ``(B, h, w, C)``, channels-last (timm Swin stages, ConvNeXt blocks), and ``(B, t, h, w, C)``
  (NTHWC, torchvision ``swin3d_t``);
- ``tokens``: ``(B, prefix + h*w, C)`` or sequence-first ``(prefix + h*w, B, C)``, the leading
  ``prefix`` tokens (class, distillation, registers) dropped; on clips ``prefix + t*h*w`` tokens in
  ``(t, h, w)`` raster order (torchvision MViT, Hugging Face VideoMAE / TimeSformer). With a patch
  embedding of stride ``p`` the grid is ``(H/p, W/p)`` (``(T/p_t, H/p, W/p)``); otherwise the grid
  whose strides agree best, then the fewest prefix tokens, then the most frames (LeViT, Swin in
  Hugging Face: no prefix; MViT: time downsampled less than space).

Which of the readings that fit a shape is meant, and whether a tensor is an attention internal or
an MLP hidden width rather than a map, needs evidence from the model's structure:
`camkit.layers.probe` supplies it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import nn

from ..errors import InputError

Kind = Literal["nchw", "nhwc", "tokens", "custom"]
KINDS = ("nchw", "nhwc", "tokens")
#: names of the same kinds on clips and volumes, accepted by ``layout=``
ALIASES = {"ncthw": "nchw", "ncdhw": "nchw", "nthwc": "nhwc", "ndhwc": "nhwc"}
MAX_PREFIX = 16
SLACK = 1.5  # cells a feature map may lose or gain to padding ("valid" convolutions, ceil pooling)
Size = tuple[int, ...]  # an input's grid size: (H, W), or (T, H, W) for clips and volumes


def kind_of(name: Optional[str]) -> Optional[str]:
    """The layout kind a user's ``layout=`` names (``"ncthw"`` is ``"nchw"`` on clips), or an error."""
    if name is None:
        return None
    kind = ALIASES.get(name, name)
    if kind not in KINDS:
        raise InputError(f"layout must be None (read from evidence) or one of {KINDS} (on clips also "
                         f"{tuple(ALIASES)}), got {name!r}")
    return kind


@dataclass(frozen=True)
class Layout:
    """A reading of a layer output: its kind, grid size and (tokens) prefix count and order.

    ``t`` is the grid's time (depth) size on clips and volumes, None on images. Calling it turns the
    raw tensor into ``(B, C, h, w)`` (``(B, C, t, h, w)``) by moving elements only (permute, view,
    slice), so a channel of the grid is a fixed set of elements of the raw tensor.
    """

    kind: Kind
    h: int
    w: int
    prefix: int = 0
    seq_first: bool = False
    fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # kind "custom": the user's reshape
    mismatch: float = 0.0  # how far the two axes' strides disagree (0: exactly one stride)
    t: Optional[int] = None
    #: tokens of a clip: ``"thw"`` (time slowest: MViT, VideoMAE) or ``"hwt"`` (time fastest: TimeSformer)
    order: str = "thw"

    @property
    def grid(self) -> Size:
        """``(h, w)``, or ``(t, h, w)`` on clips and volumes."""
        return (self.h, self.w) if self.t is None else (self.t, self.h, self.w)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.movedim(-1, 1)
        if self.kind == "tokens":
            if self.seq_first:
                t = t.transpose(0, 1)
            b, _, c = t.shape
            if self.order == "hwt" and self.t is not None:
                return t[:, self.prefix:, :].reshape(b, self.h, self.w, self.t, c).permute(0, 4, 3, 1, 2)
            return t[:, self.prefix:, :].reshape(b, *self.grid, c).movedim(-1, 1)
        assert self.fn is not None
        return self.fn(t)

    def __str__(self) -> str:
        grid = "\u00d7".join(str(g) for g in self.grid)
        if self.kind == "tokens":
            order = " (sequence-first)" if self.seq_first else ""
            if self.order == "hwt" and self.t is not None:
                grid += " (time fastest)"
            return f"tokens{order}: {self.prefix} prefix, {grid}"
        if self.kind == "custom":
            return f"reshape: {grid}"
        if self.t is not None:
            return f"{'ncthw' if self.kind == 'nchw' else 'nthwc'} {grid}"
        return f"{self.kind} {grid}"


def stride_mismatch(h: int, w: int, input_hw: tuple[int, int]) -> Optional[float]:
    """How far ``(h, w)`` is from ``(H/s, W/s)`` for the best single stride ``s``, in cells; None when
    no stride brings both axes within `SLACK` cells (then it is not a grid of this input)."""
    hh, ww = input_hw
    if h < 1 or w < 1:
        return None
    # 1/s must lie in [(h - SLACK)/H, (h + SLACK)/H] and in the same interval for w
    lo = max((h - SLACK) / hh, (w - SLACK) / ww, 1e-9)
    hi = min((h + SLACK) / hh, (w + SLACK) / ww)
    if lo > hi:
        return None
    best = min(max(lo, (h + w) / (hh + ww)), hi)  # the common stride closest to the average one
    return max(abs(h - hh * best), abs(w - ww * best))


def grid_mismatch(grid: Size, size: Size) -> Optional[float]:
    """`stride_mismatch` of a grid's ``(h, w)`` against the input's ``(H, W)``; on clips and
    volumes also ``1 <= t <= T + SLACK`` (time has a stride of its own). None: no grid of this input."""
    if len(grid) != len(size):
        return None
    if len(size) == 3 and not 1 <= grid[0] <= size[0] + SLACK:
        return None
    return stride_mismatch(grid[-2], grid[-1], (size[-2], size[-1]))


def _layout(kind: str, grid: Size, **kw: object) -> Layout:
    return Layout(kind, int(grid[-2]), int(grid[-1]), t=int(grid[0]) if len(grid) == 3 else None, **kw)  # type: ignore[arg-type]


def _splits(m: int, size: Size) -> list[Size]:
    """Every ``(h, w)`` (``(t, h, w)``, ``t <= T``) grid of ``m`` cells."""
    frames = [1] if len(size) == 2 else [t for t in range(1, min(m, size[0]) + 1) if m % t == 0]
    out: list[Size] = []
    for t in frames:
        cells = m // t
        for d in range(1, math.isqrt(cells) + 1):
            if cells % d == 0:
                for hw in {(d, cells // d), (cells // d, d)}:
                    out.append(hw if len(size) == 2 else (t, *hw))
    return out


@functools.lru_cache(maxsize=256)
def _token_grids(n: int, size: Size, patch: Optional[Size]) -> list[tuple[float, int, Size]]:
    """``(mismatch, prefix, grid)`` for the splits of ``n`` tokens into prefix + a grid of this input.

    With a patch embedding of stride ``p``: the grid at stride ``p * 2^k`` (a ViT's patches, or a
    hierarchical model's stages), rounded down or up; on clips ``T / p_t`` frames (``p_t = 1`` for a
    per-frame 2-D patch embedding, TimeSformer). Otherwise, or when none fits: every grid whose two
    spatial axes agree on one stride to within half a cell, best agreement first, then fewest prefix,
    then most frames.
    """
    hh, ww = size[-2:]
    if patch is not None:
        pt = patch[0] if len(patch) == 3 else 1
        times = [None] if len(size) == 2 else sorted({max(1, int(r(size[0] / pt))) for r in (math.floor, math.ceil)})
        for k in range(6):
            for rnd in (math.floor, math.ceil):
                h, w = int(rnd(hh / (patch[-2] << k))), int(rnd(ww / (patch[-1] << k)))
                for t in times:
                    cells = h * w * (t or 1)
                    if h * w >= 2 and 0 <= n - cells <= MAX_PREFIX:
                        return [(-1.0, n - cells, (h, w) if t is None else (t, h, w))]
    found: list[tuple[float, int, Size]] = []
    for prefix in range(0, min(MAX_PREFIX, n - 2) + 1):
        for grid in _splits(n - prefix, size):
            mis = grid_mismatch(grid, size)
            if mis is not None and mis < 0.5:  # a token grid is the input over one stride, rounded
                found.append((round(mis, 6), prefix, grid))
    return sorted(found, key=lambda f: (f[0], f[1], -f[2][0] if len(size) == 3 else 0))


def readings(t: torch.Tensor, batch: int, input_hw: Size, patch: Optional[Size] = None,
             kind: Optional[str] = None) -> list[Layout]:
    """Every layout under which ``t`` is a feature grid of an input of size ``input_hw`` (``(H, W)``, or
    ``(T, H, W)`` for clips and volumes), best first.

    ``kind`` restricts the readings to one kind (a forced ``layout=``); with it, the grid need not be
    consistent with the input (the user said so), only well formed.
    """
    kind = kind_of(kind)
    size = tuple(int(s) for s in input_hw)
    out: list[Layout] = []
    if t.dim() == len(size) + 2 and t.shape[0] == batch:
        for k, grid in (("nchw", tuple(t.shape[2:])), ("nhwc", tuple(t.shape[1:-1]))):
            if kind not in (None, k):
                continue
            mis = grid_mismatch(grid, size)
            if kind is not None or (mis is not None and grid[-1] * grid[-2] >= 2):
                out.append(_layout(k, grid, mismatch=mis if mis is not None else math.inf))
        # PyTorch's own layout first, unless channels-last fits the input clearly better
        out.sort(key=lambda r: r.mismatch - (0.5 if r.kind == "nchw" else 0.0))
    elif t.dim() == 3 and kind in (None, "tokens"):
        orders = [(False, t.shape[1])] if t.shape[0] == batch else []
        if t.shape[1] == batch and t.shape[0] != batch:
            orders.append((True, t.shape[0]))
        for seq_first, n in orders:
            for mis, prefix, grid in _token_grids(n, size, patch):
                out.append(_layout("tokens", grid, prefix=prefix, seq_first=seq_first, mismatch=max(mis, 0.0)))
    return out


def _dims(size: Size) -> str:
    return "×".join(str(s) for s in size)


def describe_failure(t: torch.Tensor, name: str, batch: int, input_hw: Size) -> str:
    """Why ``t`` is not a feature grid of this input, and what would work."""
    shape = tuple(t.shape)
    d = len(input_hw)
    grid, letters = _dims(input_hw), ("t×h×w" if d == 3 else "h×w")
    if t.dim() == d + 2 and t.shape[0] == batch:
        first = "(B, C, t, h, w)" if d == 3 else "(B, C, h, w)"
        last = "(B, t, h, w, C)" if d == 3 else "(B, h, w, C)"
        why = (f"neither {first} with {letters}={_dims(shape[2:])} nor channels-last {last} with "
               f"{letters}={_dims(shape[1:-1])} is the input {grid} divided by one stride "
               "(an attention internal (B, heads, N, head_dim) has this kind of shape)")
    elif t.dim() == 3 and batch in shape[:2]:
        why = (f"its {shape[1] if t.shape[0] == batch else shape[0]} tokens are no grid of the input "
               f"{grid} plus at most {MAX_PREFIX} prefix tokens")
    elif t.dim() in (3, d + 2):
        why = f"no dimension matches the batch size {batch}"
    else:
        why = f"it has {t.dim()} dimensions, not 3 (tokens) or {d + 2} (a feature map of a {d}-D input)"
    return (f"layer {name!r} outputs shape {shape}, which camkit cannot read as a feature map: {why}. "
            "Choose a layer with a spatial output (layer='auto' picks one), force a reading with "
            f"layout='nchw' | 'nhwc' | 'tokens', or pass reshape=callable(tensor) -> (B, C, {'t, ' if d == 3 else ''}h, w)")


def patch_size(model: nn.Module) -> Optional[Size]:
    """Stride of the first convolution (2-D or 3-D) whose kernel equals its stride (a patch embedding),
    if any: ``(p, p)``, or ``(p_t, p, p)`` for a 3-D one."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.kernel_size == m.stride and m.stride[-1] > 1:
            return tuple(int(s) for s in m.stride)
    return None


def custom(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor, name: str, dims: int = 2) -> Layout:
    """The layout of a user ``reshape`` function, checked to return ``(B, C, h, w)`` (``dims`` 2) or
    ``(B, C, t, h, w)`` (``dims`` 3: a clip or volume)."""
    g = fn(t)
    if not isinstance(g, torch.Tensor) or g.dim() != dims + 2 or g.shape[0] != t.shape[0]:
        got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        want = "(B, C, t, h, w)" if dims == 3 else "(B, C, h, w)"
        raise InputError(f"reshape for layer {name!r} must return {want} with B={t.shape[0]}, got {got}")
    return _layout("custom", tuple(g.shape[2:]), fn=fn)


def model_grid_dims(model: nn.Module) -> Optional[int]:
    """The input grid the model takes, from its structure: 3 (clips and volumes ``(B, C, T, H, W)``)
    when it says so (a ``grid_dims`` attribute, as camkit's video wrappers carry; a Hugging Face
    config with ``num_frames``) or has a 3-D convolution or pooling; 2 (images ``(B, C, H, W)``) when
    it has a 2-D convolution and nothing 3-D; None when its modules do not say (then any input goes)."""
    declared = getattr(model, "grid_dims", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    if isinstance(getattr(getattr(model, "config", None), "num_frames", None), int):
        return 3
    three = (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.BatchNorm3d)
    found: Optional[int] = None
    for m in model.modules():
        if isinstance(m, three):
            return 3
        if isinstance(m, nn.Conv2d):
            found = 2
    return found


def first_conv_channels(model: nn.Module) -> Optional[int]:
    """``in_channels`` of the model's first 2-D or 3-D convolution (what its input must have), if any."""
    return next((m.in_channels for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
