"""Baseline maps that give every table a floor: uniform, centre Gaussian, random.

Each returns maps in [0, 1] of ``size`` = (H, W) or (B, H, W) (clips and volumes, ``spatial_dims=3``:
(D, H, W) or (B, D, H, W)). How the metrics read them:
a uniform map's box is the whole image, its pointing-game and energy scores are the boxes' share of
the image, it leaves the image unchanged under Average Drop (drop 0) and it deletes pixels in a random
(seeded) order.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch

from ..errors import InputError

__all__ = ["uniform_map", "center_gaussian_map", "random_map", "BASELINES", "baseline_maps"]

Size = Union[Sequence[int], torch.Size]
Device = Union[str, torch.device, None]


def _size(size: Size, spatial_dims: int = 2) -> tuple[int, ...]:
    s = tuple(int(v) for v in size)
    if spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if len(s) not in (spatial_dims, spatial_dims + 1) or min(s) < 1:
        grid = "(H, W)" if spatial_dims == 2 else "(D, H, W)"
        raise InputError(f"size must be {grid} or (B, {grid[1:]} with positive entries, got {s}")
    return s


def uniform_map(size: Size, *, device: Device = None, dtype: torch.dtype = torch.float32,
                spatial_dims: int = 2) -> torch.Tensor:
    """All ones."""
    return torch.ones(_size(size, spatial_dims), device=device, dtype=dtype)


def center_gaussian_map(
    size: Size, *, sigma: float = 0.25, device: Device = None, dtype: torch.dtype = torch.float32,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """exp(−Σ_axes (u − N/2)² / (2(σN)²)) at pixel (voxel) centres, over each grid axis of N cells:
    1 at the centre, ``sigma`` a fraction of each side (the "objects are in the middle" prior)."""
    s = _size(size, spatial_dims)
    if sigma <= 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    g = torch.zeros((), device=device, dtype=dtype)
    for n in s[-spatial_dims:]:
        u = (torch.arange(n, device=device, dtype=dtype) + 0.5 - n / 2) / (sigma * n)
        g = g[..., None] + u**2
    g = torch.exp(-0.5 * g)
    g = g / g.max()
    return g.expand(s).clone()


def random_map(
    size: Size,
    *,
    generator: Optional[torch.Generator] = None,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """I.i.d. uniform noise in [0, 1); reproducible with ``generator`` (drawn on its device, then moved)."""
    s = _size(size, spatial_dims)
    gen_device = generator.device if generator is not None else device
    return torch.rand(s, generator=generator, device=gen_device, dtype=dtype).to(device or gen_device)


BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": uniform_map,
    "center_gaussian": center_gaussian_map,
    "random": random_map,
}


def baseline_maps(
    name: str,
    size: Size,
    *,
    device: Device = None,
    generator: Optional[torch.Generator] = None,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """Baseline ``name`` in `BASELINES` ("uniform", "center_gaussian", "random")."""
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    if name == "random":
        return random_map(size, generator=generator, device=device, spatial_dims=spatial_dims)
    return BASELINES[name](size, device=device, spatial_dims=spatial_dims)
