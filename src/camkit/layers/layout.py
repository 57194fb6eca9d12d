"""How to read a layer output as a feature grid ``(B, C, h, w)``, from the shape evidence alone.

A layer output is a feature map only if its grid is consistent with the input: ``(h, w)`` must be
the input size ``(H, W)`` divided by one stride ``s`` (up to a little padding), the same ``s`` on
both axes. Three layouts are read:

- ``nchw``: ``(B, C, h, w)``, PyTorch's convolution layout;
- ``nhwc``: ``(B, h, w, C)``, channels-last (timm Swin stages, ConvNeXt blocks);
- ``tokens``: ``(B, prefix + h*w, C)`` or sequence-first ``(prefix + h*w, B, C)``, the leading
  ``prefix`` tokens (class, distillation, registers) dropped. With a patch embedding of stride ``p``
  the grid is ``(H/p, W/p)``; otherwise the grid whose strides agree best, then the fewest prefix
  tokens (LeViT, Swin in Hugging Face: no prefix).

Which of the readings that fit a shape is meant, and whether a tensor is an attention internal or
an MLP hidden width rather than a map, needs evidence from the model's structure:
`camkit.core.probe` supplies it.
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
MAX_PREFIX = 16
SLACK = 1.5  # cells a feature map may lose or gain to padding ("valid" convolutions, ceil pooling)


@dataclass(frozen=True)
class Layout:
    """A reading of a layer output: its kind, grid size and (tokens) prefix count and order.

    Calling it turns the raw tensor into ``(B, C, h, w)`` by moving elements only (permute, view,
    slice), so a channel of the grid is a fixed set of elements of the raw tensor.
    """

    kind: Kind
    h: int
    w: int
    prefix: int = 0
    seq_first: bool = False
    fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # kind "custom": the user's reshape
    mismatch: float = 0.0  # how far the two axes' strides disagree (0: exactly one stride)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            if self.seq_first:
                t = t.transpose(0, 1)
            b, _, c = t.shape
            return t[:, self.prefix:, :].reshape(b, self.h, self.w, c).permute(0, 3, 1, 2)
        assert self.fn is not None
        return self.fn(t)

    def __str__(self) -> str:
        grid = f"{self.h}\u00d7{self.w}"
        if self.kind == "tokens":
            order = " (sequence-first)" if self.seq_first else ""
            return f"tokens{order}: {self.prefix} prefix, {grid}"
        if self.kind == "custom":
            return f"reshape: {grid}"
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


@functools.lru_cache(maxsize=256)
def _token_grids(n: int, input_hw: tuple[int, int], patch: Optional[tuple[int, int]]) -> list[tuple[float, int, int, int]]:
    """``(mismatch, prefix, h, w)`` for the splits of ``n`` tokens into prefix + a grid of this input.

    With a patch embedding of stride ``p``: the grid at stride ``p * 2^k`` (a ViT's patches, or a
    hierarchical model's stages), rounded down or up. Otherwise, or when none fits: every grid whose
    two axes agree on one stride to within half a cell, best agreement first, then fewest prefix.
    """
    hh, ww = input_hw
    if patch is not None:
        for k in range(6):
            for rnd in (math.floor, math.ceil):
                h, w = int(rnd(hh / (patch[0] << k))), int(rnd(ww / (patch[1] << k)))
                if h * w >= 2 and 0 <= n - h * w <= MAX_PREFIX:
                    return [(-1.0, n - h * w, h, w)]
    found: list[tuple[float, int, int, int]] = []
    for prefix in range(0, min(MAX_PREFIX, n - 2) + 1):
        m = n - prefix
        for d in range(1, math.isqrt(m) + 1):
            if m % d:
                continue
            for h, w in {(d, m // d), (m // d, d)}:
                mis = stride_mismatch(h, w, input_hw)
                if mis is not None and mis < 0.5:  # a token grid is the input over one stride, rounded
                    found.append((round(mis, 6), prefix, h, w))
    return sorted(found)


def readings(t: torch.Tensor, batch: int, input_hw: tuple[int, int], patch: Optional[tuple[int, int]] = None,
             kind: Optional[str] = None) -> list[Layout]:
    """Every layout under which ``t`` is a feature grid of an input of size ``input_hw``, best first.

    ``kind`` restricts the readings to one kind (a forced ``layout=``); with it, the grid need not be
    consistent with the input (the user said so), only well formed.
    """
    if kind is not None and kind not in KINDS:
        raise InputError(f"layout must be one of {KINDS}, got {kind!r}")
    out: list[Layout] = []
    if t.dim() == 4 and t.shape[0] == batch:
        for k, (h, w) in (("nchw", (t.shape[2], t.shape[3])), ("nhwc", (t.shape[1], t.shape[2]))):
            if kind not in (None, k):
                continue
            mis = stride_mismatch(h, w, input_hw)
            if kind is not None or (mis is not None and h * w >= 2):
                out.append(Layout(k, h, w, mismatch=mis if mis is not None else math.inf))  # type: ignore[arg-type]
        # PyTorch's own layout first, unless channels-last fits the input clearly better
        out.sort(key=lambda r: r.mismatch - (0.5 if r.kind == "nchw" else 0.0))
    elif t.dim() == 3 and kind in (None, "tokens"):
        orders = [(False, t.shape[1])] if t.shape[0] == batch else []
        if t.shape[1] == batch and t.shape[0] != batch:
            orders.append((True, t.shape[0]))
        for seq_first, n in orders:
            for mis, prefix, h, w in _token_grids(n, input_hw, patch):
                out.append(Layout("tokens", h, w, prefix, seq_first, mismatch=max(mis, 0.0)))
    return out


def describe_failure(t: torch.Tensor, name: str, batch: int, input_hw: tuple[int, int]) -> str:
    """Why ``t`` is not a feature grid of this input, and what would work."""
    shape = tuple(t.shape)
    if t.dim() == 4 and t.shape[0] == batch:
        why = (f"neither (B, C, h, w) with h×w={shape[2]}×{shape[3]} nor channels-last (B, h, w, C) with "
               f"h×w={shape[1]}×{shape[2]} is the input {input_hw[0]}×{input_hw[1]} divided by one stride "
               "(an attention internal (B, heads, N, head_dim) has this kind of shape)")
    elif t.dim() == 3:
        why = (f"its {shape[1] if t.shape[0] == batch else shape[0]} tokens are no grid of the input "
               f"{input_hw[0]}×{input_hw[1]} plus at most {MAX_PREFIX} prefix tokens")
    elif t.dim() in (3, 4):
        why = f"no dimension matches the batch size {batch}"
    else:
        why = f"it has {t.dim()} dimensions, not 3 (tokens) or 4 (a feature map)"
    return (f"layer {name!r} outputs shape {shape}, which camkit cannot read as a feature map: {why}. "
            "Choose a layer with a spatial output (layer='auto' picks one), force a reading with "
            "layout='nchw' | 'nhwc' | 'tokens', or pass reshape=callable(tensor) -> (B, C, h, w)")


def patch_size(model: nn.Module) -> Optional[tuple[int, int]]:
    """Stride of the first convolution whose kernel equals its stride (a patch embedding), if any."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.stride[0] > 1:
            return (int(m.stride[0]), int(m.stride[1]))
    return None


def custom(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor, name: str) -> Layout:
    """The layout of a user ``reshape`` function, checked to return ``(B, C, h, w)``."""
    g = fn(t)
    if not isinstance(g, torch.Tensor) or g.dim() != 4 or g.shape[0] != t.shape[0]:
        got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise InputError(f"reshape for layer {name!r} must return (B, C, h, w) with B={t.shape[0]}, got {got}")
    return Layout("custom", int(g.shape[2]), int(g.shape[3]), fn=fn)
