"""Input validation shared by the metric modules: maps, boxes, images. Errors are InputError."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Union

import torch

from ..errors import InputError

BoxesLike = Union[torch.Tensor, Sequence[Any]]


class BoxClippedWarning(UserWarning):
    """A ground-truth box reached outside the image and was clipped (or dropped if nothing remained)."""


def grid_names(spatial_dims: int) -> str:
    """``"(H, W)"`` for 2-D grids, ``"(D, H, W)"`` for 3-D ones (a clip's D is its frames T)."""
    return {2: "(H, W)", 3: "(D, H, W)"}.get(spatial_dims, f"({spatial_dims} axes)")


def check_spatial_dims(spatial_dims: int) -> int:
    """``spatial_dims`` as an int in (2, 3); InputError otherwise."""
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims must be 2 (images, maps (H, W)) or 3 (clips and volumes, maps (D, H, W)), "
                         f"got {spatial_dims!r}")
    return int(spatial_dims)


def as_map_batch(maps: torch.Tensor, name: str = "maps", spatial_dims: int = 2) -> tuple[torch.Tensor, bool]:
    """Return ``(maps as (B, *grid) float, was_single)``; reject wrong rank, empty or non-finite maps.

    The grid has ``spatial_dims`` axes: ``(H, W)`` (default) or ``(D, H, W)`` (a volume, or a clip's
    ``(T, H, W)``); one map has that rank, a batch one more.
    """
    d = check_spatial_dims(spatial_dims)
    grid = grid_names(d)
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape {grid} or (B, {grid[1:]}, got {type(maps).__name__}")
    if maps.ndim not in (d, d + 1):
        hint = ("; for (D, H, W) volumes or (T, H, W) clips pass spatial_dims=3" if d == 2 and maps.ndim == 4
                else "; for 2-D maps leave spatial_dims=2" if d == 3 and maps.ndim == 2 else "")
        raise InputError(f"{name} must have shape {grid} or (B, {grid[1:]}, got shape {tuple(maps.shape)}{hint}")
    if maps.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(maps.shape)})")
    single = maps.ndim == d
    m = maps.unsqueeze(0) if single else maps
    if not m.is_floating_point():
        m = m.float()
    bad = ~torch.isfinite(m)
    if bool(bad.any()):
        idx = sorted({int(i) for i in bad.flatten(1).any(1).nonzero().flatten()})
        raise InputError(f"{name} contain NaN or infinite values (map index {idx[:10]}); fix the method output first")
    return m, single


def check_unit_range(maps: torch.Tensor, name: str = "maps", tol: float = 1e-4) -> None:
    """Raise InputError unless all values lie in [0, 1] (a small float tolerance is allowed)."""
    lo, hi = float(maps.min()), float(maps.max())
    if lo < -tol or hi > 1 + tol:
        raise InputError(
            f"{name} must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); min-max normalise them first"
        )


def box_names(spatial_dims: int) -> str:
    """``"x0, y0, x1, y1"`` (2-D) or ``"x0, y0, z0, x1, y1, z1"`` (3-D): x along W, y along H, z along D."""
    axes = "xyz"[:spatial_dims]
    return ", ".join([f"{a}0" for a in axes] + [f"{a}1" for a in axes])


def _one_box_tensor(boxes: Any, index: int, spatial_dims: int = 2) -> torch.Tensor:
    n = 2 * spatial_dims
    t = torch.as_tensor(boxes, dtype=torch.float32) if not isinstance(boxes, torch.Tensor) else boxes.float()
    if t.ndim == 1 and t.numel() == n:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[-1] != n:
        raise InputError(f"ground-truth boxes of image {index} must have shape (N, {n}) as {box_names(spatial_dims)}; "
                         f"got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"image {index} has no ground-truth box; drop it from the evaluation or give a box")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"ground-truth boxes of image {index} contain NaN or infinite values")
    if bool((t[:, spatial_dims:] < t[:, :spatial_dims]).any()):
        ends = " or ".join(f"{a}1 < {a}0" for a in "xyz"[:spatial_dims])
        raise InputError(
            f"ground-truth boxes of image {index} have {ends}: {t.tolist()}; "
            f"camkit boxes are ({box_names(spatial_dims)}) in pixels, not corner + size"
        )
    return t


def as_box_list(gt_boxes: BoxesLike, batch: int, single: bool, size: tuple[int, ...]) -> list[torch.Tensor]:
    """Return one (N_i, 2d) float tensor per map, clipped to the grid ``size = (H, W)`` or ``(D, H, W)``.

    ``gt_boxes`` is an (N, 2d) tensor/list for a single map, and a length-B sequence of such (or a
    (B, N, 2d) tensor) for a batch; d = ``len(size)``, boxes ``(x0, y0, [z0,] x1, y1, [z1])``. Boxes
    reaching outside the grid are clipped with a `BoxClippedWarning`; boxes left with no
    volume are dropped; a map left with none is an error.
    """
    d = len(size)
    if single:
        items: Sequence[Any] = [gt_boxes]
    elif isinstance(gt_boxes, torch.Tensor):
        if gt_boxes.ndim != 3:
            raise InputError(
                f"for a batch of {batch} maps give one box set per image: a length-{batch} list of (N_i, {2 * d}) "
                f"tensors or a (B, N, {2 * d}) tensor; got a tensor of shape {tuple(gt_boxes.shape)}"
            )
        items = list(gt_boxes)
    else:
        items = list(gt_boxes)
    if len(items) != batch:
        raise InputError(f"got {len(items)} ground-truth box sets for {batch} maps; give exactly one per map")
    extent = [int(v) for v in reversed(size)]  # x, y[, z] limits
    where = "x".join(str(v) for v in extent)
    out = []
    for i, b in enumerate(items):
        t = _one_box_tensor(b, i, d)
        limit = t.new_tensor(extent * 2)
        clipped = torch.minimum(t.clamp(min=0), limit)
        if not torch.equal(clipped, t):
            warnings.warn(
                f"ground-truth boxes of image {i} reach outside the {where} grid and were clipped: "
                f"{t.tolist()} -> {clipped.tolist()}",
                BoxClippedWarning,
                stacklevel=3,
            )
        keep = (clipped[:, d:] > clipped[:, :d]).all(1)
        if not bool(keep.all()):
            if not bool(keep.any()):
                raise InputError(f"no ground-truth box of image {i} has any area inside the {where} grid: {t.tolist()}")
            warnings.warn(f"dropped {int((~keep).sum())} empty box(es) of image {i}", BoxClippedWarning, stacklevel=3)
        out.append(clipped[keep])
    return out


def as_mask_batch(mask: Any, maps: torch.Tensor, single: bool) -> torch.Tensor:
    """A region mask as ``(B, *grid)`` float weights in [0, 1] matching ``maps`` ``(B, *grid)``.

    ``mask``: one grid (``(H, W)`` or ``(D, H, W)``) for a single map (or for every map of a batch), a
    batch of them for a batch; bool, or floats in [0, 1] (the share of each pixel or voxel in the region).
    """
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(mask)
    m = m.to(maps.device)
    grid = maps.ndim - 1
    if m.ndim == grid and not single:
        m = m.expand(maps.shape[0], *m.shape)
    if m.ndim == grid:
        m = m.unsqueeze(0)
    if tuple(m.shape) != tuple(maps.shape):
        raise InputError(
            f"mask of shape {tuple(m.shape) if single else tuple(mask.shape)} does not match the map(s) of shape "
            f"{tuple(maps.shape[1:]) if single else tuple(maps.shape)}; give the region at the map's resolution"
        )
    m = m.float()
    if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
        raise InputError("mask values must be booleans or weights in [0, 1]")
    if bool((m.flatten(1).amax(1) == 0).any()):
        raise InputError(f"mask of map {int((m.flatten(1).amax(1) == 0).nonzero()[0])} is empty; give a region")
    return m


def match_maps_to_images(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bring (B, *grid) maps to the inputs' (B, C, *grid) size and device: bilinear for images
    (B, C, H, W), trilinear for clips and volumes (B, C, D, H, W); clamped to [0, 1].

    Raises InputError on a batch or rank mismatch, or an H:W aspect ratio that differs by more than
    one map pixel (a clip's frame axis may be resampled freely).
    """
    if images.ndim not in (4, 5) or maps.ndim != images.ndim - 1:
        raise InputError(f"maps of shape {tuple(maps.shape)} do not fit inputs of shape {tuple(images.shape)}: "
                         "give (B, H, W) maps with (B, C, H, W) images or (B, D, H, W) maps with (B, C, D, H, W) clips")
    if maps.shape[0] != images.shape[0]:
        raise InputError(f"got {maps.shape[0]} maps for {images.shape[0]} images")
    maps = maps.to(device=images.device, dtype=images.dtype if images.is_floating_point() else torch.float32)
    size = tuple(images.shape[2:])
    h, w = maps.shape[-2:]
    H, W = images.shape[-2:]
    if tuple(maps.shape[1:]) == size:
        return maps
    if abs(h * W / w - H) > H / h:
        raise InputError(
            f"maps of size {h}x{w} do not fit images of size {H}x{W} (different aspect ratio); "
            "compute the maps at the image size"
        )
    mode = "bilinear" if len(size) == 2 else "trilinear"
    up = torch.nn.functional.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False)
    return up.squeeze(1).clamp(0, 1)
