"""Map post-processing: upsampling to the input size and per-map min-max normalisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def finalize(raw: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Upsample, normalise and fuse per-layer raw maps ``(B, K, h_l, w_l)`` by element-wise max."""
    maps = [normalize(upsample(r.float(), size)) for r in raw]
    fused = maps[0] if len(maps) == 1 else normalize(torch.stack(maps).amax(0))
    return fused
