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


def as_map_batch(maps: torch.Tensor, name: str = "maps") -> tuple[torch.Tensor, bool]:
    """Return ``(maps as (B, H, W) float, was_single)``; reject wrong rank, empty or non-finite maps."""
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (H, W) or (B, H, W), got {type(maps).__name__}")
    if maps.ndim not in (2, 3):
        raise InputError(f"{name} must have shape (H, W) or (B, H, W), got shape {tuple(maps.shape)}")
    if maps.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(maps.shape)})")
    single = maps.ndim == 2
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


def _one_box_tensor(boxes: Any, index: int) -> torch.Tensor:
    t = torch.as_tensor(boxes, dtype=torch.float32) if not isinstance(boxes, torch.Tensor) else boxes.float()
    if t.ndim == 1 and t.numel() == 4:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[-1] != 4:
        raise InputError(f"ground-truth boxes of image {index} must have shape (N, 4) as x0, y0, x1, y1; got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"image {index} has no ground-truth box; drop it from the evaluation or give a box")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"ground-truth boxes of image {index} contain NaN or infinite values")
    if bool(((t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])).any()):
        raise InputError(
            f"ground-truth boxes of image {index} have x1 < x0 or y1 < y0: {t.tolist()}; "
            "camkit boxes are (x0, y0, x1, y1) in pixels, not (x, y, w, h)"
        )
    return t


def as_box_list(gt_boxes: BoxesLike, batch: int, single: bool, size: tuple[int, int]) -> list[torch.Tensor]:
    """Return one (N_i, 4) float tensor per image, clipped to the image ``size = (H, W)``.

    ``gt_boxes`` is an (N, 4) tensor/list for a single (H, W) map, and a length-B sequence of such (or a
    (B, N, 4) tensor) for a (B, H, W) batch. Boxes reaching outside the image are clipped with a
    `BoxClippedWarning`; boxes left with no area are dropped; an image left with none is an error.
    """
    if single:
        items: Sequence[Any] = [gt_boxes]
    elif isinstance(gt_boxes, torch.Tensor):
        if gt_boxes.ndim != 3:
            raise InputError(
                f"for a batch of {batch} maps give one box set per image: a length-{batch} list of (N_i, 4) "
                f"tensors or a (B, N, 4) tensor; got a tensor of shape {tuple(gt_boxes.shape)}"
            )
        items = list(gt_boxes)
    else:
        items = list(gt_boxes)
    if len(items) != batch:
        raise InputError(f"got {len(items)} ground-truth box sets for {batch} maps; give exactly one per map")
    h, w = size
    out = []
    for i, b in enumerate(items):
        t = _one_box_tensor(b, i)
        limit = t.new_tensor([w, h, w, h])
        clipped = torch.minimum(t.clamp(min=0), limit)
        if not torch.equal(clipped, t):
            warnings.warn(
                f"ground-truth boxes of image {i} reach outside the {w}x{h} image and were clipped: "
                f"{t.tolist()} -> {clipped.tolist()}",
                BoxClippedWarning,
                stacklevel=3,
            )
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        if not bool(keep.all()):
            if not bool(keep.any()):
                raise InputError(f"no ground-truth box of image {i} has any area inside the {w}x{h} image: {t.tolist()}")
            warnings.warn(f"dropped {int((~keep).sum())} empty box(es) of image {i}", BoxClippedWarning, stacklevel=3)
        out.append(clipped[keep])
    return out


def as_mask_batch(mask: Any, maps: torch.Tensor, single: bool) -> torch.Tensor:
    """A region mask as ``(B, H, W)`` float weights in [0, 1] matching ``maps`` ``(B, H, W)``.

    ``mask``: (H, W) for a single map (or for every map of a batch), (B, H, W) for a batch; bool, or
    floats in [0, 1] (the share of each pixel in the region).
    """
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(mask)
    m = m.to(maps.device)
    if m.ndim == 2 and not single:
        m = m.expand(maps.shape[0], *m.shape)
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if tuple(m.shape) != tuple(maps.shape):
        raise InputError(
            f"mask of shape {tuple(mask.shape)} does not match the map(s) of shape "
            f"{tuple(maps.shape[1:]) if single else tuple(maps.shape)}; give the region at the map's resolution"
        )
    m = m.float()
    if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
        raise InputError("mask values must be booleans or weights in [0, 1]")
    if bool((m.flatten(1).amax(1) == 0).any()):
        raise InputError(f"mask of map {int((m.flatten(1).amax(1) == 0).nonzero()[0])} is empty; give a region")
    return m


def match_maps_to_images(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bring (B, h, w) maps to the images' (B, C, H, W) size (bilinear, clamped to [0, 1]) and device.

    Raises InputError on a batch mismatch or an aspect ratio that differs by more than one map pixel.
    """
    if images.ndim != 4:
        raise InputError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if maps.shape[0] != images.shape[0]:
        raise InputError(f"got {maps.shape[0]} maps for {images.shape[0]} images")
    maps = maps.to(device=images.device, dtype=images.dtype if images.is_floating_point() else torch.float32)
    h, w = maps.shape[-2:]
    H, W = images.shape[-2:]
    if (h, w) == (H, W):
        return maps
    if abs(h * W / w - H) > H / h:
        raise InputError(
            f"maps of size {h}x{w} do not fit images of size {H}x{W} (different aspect ratio); "
            "compute the maps at the image size"
        )
    up = torch.nn.functional.interpolate(maps.unsqueeze(1), size=(H, W), mode="bilinear", align_corners=False)
    return up.squeeze(1).clamp(0, 1)
