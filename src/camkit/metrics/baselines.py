"""Baseline maps that give every table a floor: uniform, centre Gaussian, random.

Each returns maps in [0, 1] of ``size`` = (H, W) or (B, H, W). How the metrics read them:
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


def _size(size: Size) -> tuple[int, ...]:
    s = tuple(int(v) for v in size)
    if len(s) not in (2, 3) or min(s) < 1:
        raise InputError(f"size must be (H, W) or (B, H, W) with positive entries, got {s}")
    return s


def uniform_map(size: Size, *, device: Device = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The uniform baseline: ones of `size` `(H, W)` or `(B, H, W)`: a map that says "everywhere"
    (its box is the whole image; its pointing game hits with the share of the image the boxes cover)."""
    return torch.ones(_size(size), device=device, dtype=dtype)


def center_gaussian_map(
    size: Size, *, sigma: float = 0.25, device: Device = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """exp(−((x − W/2)²/(2(σW)²) + (y − H/2)²/(2(σH)²))) at pixel centres: 1 at the centre,
    ``sigma`` a fraction of each side (the "objects are in the middle" prior)."""
    s = _size(size)
    if sigma <= 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    h, w = s[-2:]
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5 - h / 2) / (sigma * h)
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5 - w / 2) / (sigma * w)
    g = torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
    g = g / g.max()
    return g.expand(s).clone()


def random_map(
    size: Size,
    *,
    generator: Optional[torch.Generator] = None,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """I.i.d. uniform noise in [0, 1); reproducible with ``generator`` (drawn on its device, then moved)."""
    s = _size(size)
    gen_device = generator.device if generator is not None else device
    return torch.rand(s, generator=generator, device=gen_device, dtype=dtype).to(device or gen_device)


#: the baseline maps every bench table carries, by name: `uniform_map`, `center_gaussian_map`, `random_map`
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
) -> torch.Tensor:
    """Baseline ``name`` in `BASELINES` ("uniform", "center_gaussian", "random")."""
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    if name == "random":
        return random_map(size, generator=generator, device=device)
    return BASELINES[name](size, device=device)
