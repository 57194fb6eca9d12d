"""Map post-processing: upsampling to the input size and per-map min-max normalisation.

A grid is 2-D ``(h, w)`` for images or 3-D ``(t, h, w)`` for clips and volumes; ``size`` tuples say
which: maps are resized bilinearly (2-D) or trilinearly (3-D), ``align_corners=False``, and
normalised over all of a map's grid axes (per image, per clip).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .region import InputRegion


def normalize(maps: torch.Tensor, rel_eps: float = 1e-6, dims: int = 2) -> torch.Tensor:
    """Min-max normalise each map over its last ``dims`` dims (2: ``(h, w)``, 3: ``(t, h, w)``) to
    [0, 1]; a constant map becomes zeros.

    ``m' = (m - min m) / (max m - min m)``, and ``0`` where ``max m - min m <= rel_eps * max |m|``
    (constant up to float rounding). The test is relative, so a map whose values are all tiny (a
    random-init network's activations can be 1e-14) keeps its shape.
    """
    flat = maps.flatten(-dims)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    span = hi - lo
    ok = (span > 0) & (span > rel_eps * torch.maximum(lo.abs(), hi.abs()))
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


MODES = {2: "bilinear", 3: "trilinear"}


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize ``(..., h, w)`` maps to ``size`` ``(H, W)`` bilinearly, or ``(..., t, h, w)`` maps to
    ``(T, H, W)`` trilinearly (``align_corners=False`` both)."""
    d = len(size)
    if tuple(maps.shape[-d:]) == tuple(size):
        return maps
    lead = maps.shape[:-d]
    flat = maps.reshape(-1, 1, *maps.shape[-d:])
    out = F.interpolate(flat, size=tuple(size), mode=MODES[d], align_corners=False)
    return out.reshape(*lead, *size)


def to_input(maps: torch.Tensor, size: tuple[int, ...], region: Optional[InputRegion] = None) -> torch.Tensor:
    """Grid maps ``(B, ..., *grid)`` at the input's ``size``: bilinear / trilinear upsampling, or, for a
    model that resizes and pads inside (``region``, images only), sampling the input's sub-rectangle
    of the grid."""
    return upsample(maps, size) if region is None else region.resample(maps, size)  # type: ignore[arg-type]


FUSIONS = ("max", "product")


def finalize(raw: list[torch.Tensor], size: tuple[int, ...], region: Optional[InputRegion] = None,
             fuse: str = "max") -> torch.Tensor:
    """Bring per-layer raw maps ``(B, K, *grid_l)`` to the input's ``size`` (`to_input`),
    normalise each to [0, 1] over its grid and fuse them: element-wise ``"max"``, or ``"product"``
    (RefineCAM), normalised again."""
    d = len(size)
    maps = [normalize(to_input(r.float(), size, region), dims=d) for r in raw]
    if len(maps) == 1:
        return maps[0]
    stacked = torch.stack(maps)
    return normalize(stacked.amax(0) if fuse == "max" else stacked.prod(0), dims=d)
