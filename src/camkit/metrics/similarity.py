"""Map-to-map similarity: Spearman rank correlation and SSIM, batched, in torch."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ._checks import as_map_batch

__all__ = ["spearman_correlation", "ssim"]


def _pair(a: torch.Tensor, b: torch.Tensor, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    x, single = as_map_batch(a, "a", spatial_dims)
    y, _ = as_map_batch(b, "b", spatial_dims)
    if x.shape != y.shape:
        raise InputError(f"maps to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return x, y.to(x.device), single


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) ranks 0..N-1, ties get the mean of their ranks."""
    s = v.sort(dim=1).values.contiguous()
    v = v.contiguous()
    lo = torch.searchsorted(s, v, right=False)
    hi = torch.searchsorted(s, v, right=True)
    return (lo + hi - 1).double() / 2


def spearman_correlation(a: torch.Tensor, b: torch.Tensor, *, spatial_dims: int = 2) -> torch.Tensor:
    """Spearman ρ = Pearson correlation of the (tie-averaged) ranks of two maps, per map pair.

    (H, W) pairs -> 0-dim, (B, H, W) -> (B,); ``spatial_dims=3``: (D, H, W) and (B, D, H, W). A constant
    map has no ranking: ρ = 1 if both maps are constant, 0 if only one is (never NaN).
    """
    x, y, single = _pair(a, b, spatial_dims)
    rx = _average_ranks(x.flatten(1).double())
    ry = _average_ranks(y.flatten(1).double())
    rx = rx - rx.mean(1, keepdim=True)
    ry = ry - ry.mean(1, keepdim=True)
    sx, sy = rx.pow(2).sum(1), ry.pow(2).sum(1)
    rho = (rx * ry).sum(1) / (sx * sy).sqrt().clamp(min=1e-300)
    const_x, const_y = sx == 0, sy == 0
    rho = torch.where(const_x & const_y, torch.ones_like(rho), torch.where(const_x | const_y, torch.zeros_like(rho), rho))
    rho = rho.clamp(-1, 1).float()
    return rho[0] if single else rho


def ssim(
    a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two maps with a Gaussian window, per map pair.

    SSIM = (2μₐμ_b + C1)(2σₐ_b + C2) / ((μₐ² + μ_b² + C1)(σₐ² + σ_b² + C2)), C1 = (0.01 L)², C2 = (0.03 L)²,
    L = ``data_range``; local statistics over valid window positions only (no padding). The window
    shrinks to the largest odd size that fits a small map. (H, W) -> 0-dim, (B, H, W) -> (B,);
    ``spatial_dims=3``: the window is a 3-D Gaussian over (D, H, W) volumes or (T, H, W) clips.
    """
    x, y, single = _pair(a, b, spatial_dims)
    x, y = x.double().unsqueeze(1), y.double().unsqueeze(1)
    k = min([window] + list(x.shape[2:]))
    k -= 1 - k % 2
    r = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, valid positions only, along every grid axis
        for axis in range(2, t.ndim):
            moved = t.movedim(axis, -1)
            rows = nn.functional.conv1d(moved.reshape(-1, 1, moved.shape[-1]), g)
            t = rows.view(*moved.shape[:-1], rows.shape[-1]).movedim(-1, axis)
        return t

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx**2
    vy = blur(y * y) - my**2
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1).float()
    return out[0] if single else out
