"""Turn transformer token outputs ``(B, N, C)`` into a feature grid ``(B, C, h, w)``.

The grid size comes from the input size and the patch size (the stride of the patch-embedding
convolution); the remaining ``N - h*w`` leading tokens are prefix tokens (class, distillation,
register) and are dropped. Nothing is hard-coded to 14 x 14 or to one class token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import InputError

MAX_PREFIX = 16


def patch_size(model: nn.Module) -> Optional[tuple[int, int]]:
    """Stride of the first convolution whose kernel equals its stride (a patch embedding), if any."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.stride[0] > 1:
            return (int(m.stride[0]), int(m.stride[1]))
    return None


@dataclass(frozen=True)
class TokenGrid:
    """How to read a token tensor as a grid: layout, number of prefix tokens and grid size."""

    seq_first: bool
    prefix: int
    h: int
    w: int

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.seq_first:
            t = t.transpose(0, 1)
        b, _, c = t.shape
        return t[:, self.prefix:, :].reshape(b, self.h, self.w, c).permute(0, 3, 1, 2)


def _grid_shape(n: int, input_hw: tuple[int, int], patch: Optional[tuple[int, int]]) -> Optional[tuple[int, int, int]]:
    hh, ww = input_hw
    if patch is not None:
        h, w = hh // patch[0], ww // patch[1]
        if 0 <= n - h * w <= MAX_PREFIX:
            return n - h * w, h, w
    for prefix in range(0, MAX_PREFIX + 1):  # no patch embedding found: match the input's aspect ratio
        m = n - prefix
        for h in range(1, m + 1):
            if m % h == 0 and h * ww == (m // h) * hh:
                return prefix, h, m // h
    return None


def token_grid(t: torch.Tensor, batch: int, input_hw: tuple[int, int], patch: Optional[tuple[int, int]]) -> Optional[TokenGrid]:
    """A :class:`TokenGrid` for a 3-D token tensor, or None if it cannot be read as a grid."""
    if t.dim() != 3:
        return None
    if t.shape[0] == batch:
        seq_first, n = False, t.shape[1]
    elif t.shape[1] == batch:
        seq_first, n = True, t.shape[0]
    else:
        return None
    shape = _grid_shape(n, input_hw, patch)
    if shape is None or shape[1] * shape[2] < 2:
        return None
    return TokenGrid(seq_first, *shape)


def as_grid(t: torch.Tensor, batch: int, input_hw: tuple[int, int], patch: Optional[tuple[int, int]], name: str) -> torch.Tensor:
    """Return a ``(B, C, h, w)`` view of a layer output (4-D as is, tokens through a grid)."""
    if t.dim() == 4:
        return t
    grid = token_grid(t, batch, input_hw, patch)
    if grid is None:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(t.shape)}, which is neither (B, C, h, w) nor tokens "
            f"(B, prefix + h*w, C) for an input of size {input_hw}; choose a layer with a spatial output "
            "or pass reshape=callable(tensor) -> (B, C, h, w)"
        )
    return grid(t)
