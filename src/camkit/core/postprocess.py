"""Map post-processing: upsampling to the input size and per-map min-max normalisation."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .region import InputRegion


def normalize(maps: torch.Tensor, rel_eps: float = 1e-6) -> torch.Tensor:
    """Min-max normalise each map over its last two dims to [0, 1]; a constant map becomes zeros.

    ``m' = (m - min m) / (max m - min m)``, and ``0`` where ``max m - min m <= rel_eps * max |m|``
    (constant up to float rounding). The test is relative, so a map whose values are all tiny (a
    random-init network's activations can be 1e-14) keeps its shape.
    """
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    span = hi - lo
    ok = (span > 0) & (span > rel_eps * torch.maximum(lo.abs(), hi.abs()))
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``(..., h, w)`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def to_input(maps: torch.Tensor, size: tuple[int, int], region: Optional[InputRegion] = None) -> torch.Tensor:
    """Grid maps ``(B, ..., h, w)`` at the input's ``size``: bilinear upsampling, or, for a model that
    resizes and pads inside (``region``), sampling the input's sub-rectangle of the grid."""
    return upsample(maps, size) if region is None else region.resample(maps, size)


FUSIONS = ("max", "product")


def finalize(raw: list[torch.Tensor], size: tuple[int, int], region: Optional[InputRegion] = None,
             fuse: str = "max") -> torch.Tensor:
    """Bring per-layer raw maps ``(B, K, h_l, w_l)`` to the input (`to_input`), normalise each to
    [0, 1] and fuse them: element-wise ``"max"``, or ``"product"`` (RefineCAM), normalised again."""
    maps = [normalize(to_input(r.float(), size, region)) for r in raw]
    if len(maps) == 1:
        return maps[0]
    stacked = torch.stack(maps)
    return normalize(stacked.amax(0) if fuse == "max" else stacked.prod(0))
