"""Map post-processing: upsampling to the input size and per-map min-max normalisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map over its last two dims to [0, 1]; a constant map becomes zeros.

    ``m' = (m - min m) / (max m - min m)``, and ``0`` where ``max m - min m <= eps``.
    """
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    span = flat.max(-1, keepdim=True).values - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
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
