"""Localisation metrics: box from a map, IoU, MaxBoxAcc, Pointing Game, Energy-based Pointing Game,
and the last two for a region given as a mask (a segmentation class's pixels).

Conventions (all explicit parameters, defaults from the original papers):

* Maps are (H, W) or (B, H, W) at the image's pixel grid; boxes are ``(x0, y0, x1, y1)`` in pixels with
  x1/y1 exclusive (a pixel with integer index (x, y) is inside when ``x0 <= x < x1``, ``y0 <= y < y1``).
* Clips and volumes: every function takes ``spatial_dims=3``; maps are then (D, H, W) or (B, D, H, W)
  (a clip's D is its frames T) and boxes ``(x0, y0, z0, x1, y1, z1)`` with z along D, ends exclusive.
  The same code runs on both grids (scipy labels N-D components); nothing is computed per frame.
* A map's box is the bounding box of the largest connected component (full connectivity by default:
  8 neighbours in 2-D as OpenCV contours, 26 in 3-D; 4 or 6 / 18 on request) of
  ``map >= threshold * max(map)`` — the CAM / Grad-CAM rule (Grad-CAM: 15 %).
  Ties between equally large components go to the first in raster order. A map whose maximum is
  <= 0 (e.g. all zeros) has no box: the empty box ``(0, 0, 0, 0)``, IoU 0 with anything. A uniform
  positive map gives the full-image box.
* The IoU of a map is the best IoU over the image's ground-truth boxes.
* Against a region mask (a segmentation, a clip's tube of per-frame boxes), `mask_iou` is the
  IoU of the voxels ``map >= threshold * max(map)`` with the mask's voxels (``mask >= 0.5``).
* For a detection, the explained box is the ground truth: ``localization_iou(map, [box])``,
  ``pointing_game(map, [box])``, ``energy_pointing_game(map, [box])``; for a segmentation class,
  `mask_pointing_game` and `mask_energy` with its mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError
from ._checks import BoxesLike, as_box_list, as_map_batch, as_mask_batch, check_spatial_dims
from .protocol import Protocol

__all__ = [
    "LocalizationProtocol",
    "MaxBoxAccResult",
    "box_from_map",
    "box_iou",
    "localization_iou",
    "threshold_ious",
    "max_box_acc",
    "max_box_acc_from_ious",
    "pointing_game",
    "energy_pointing_game",
    "mask_pointing_game",
    "mask_energy",
    "mask_iou",
    "threshold_mask_ious",
    "DEFAULT_THRESHOLDS",
]

#: Choe et al. 2020 sweep: 0.00, 0.01, ..., 0.99 (cam_curve_interval = 0.01).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(i * 0.01, 2) for i in range(100))
"""MaxBoxAcc's thresholds, fractions of each map's maximum: 0.00, 0.01, ..., 0.99 (Choe et al. 2020)."""

TIE_TOLERANCE = 1e-6  # relative: pixels this close to the maximum tie in the pointing game


@dataclass(frozen=True)
class LocalizationProtocol(Protocol):
    """Conventions of the localisation metrics (defaults = the functions' defaults)."""

    NAME: ClassVar[str] = "Localization"
    REFERENCE: ClassVar[str] = (
        "box: largest component of map >= threshold*max (Selvaraju et al. 2017); MaxBoxAcc: Choe et al. 2020; "
        "Pointing Game: Zhang et al. 2016; Energy PG: Wang et al. 2020 (Score-CAM)"
    )
    threshold: float = 0.15
    connectivity: Optional[int] = None  # None: full (8 neighbours in 2-D, 26 in 3-D)
    spatial_dims: int = 2
    box_match: str = "best IoU over ground-truth boxes"
    maxboxacc_iou: tuple[float, ...] = (0.5,)
    maxboxacc_thresholds: str = "0.00:0.99:0.01 (fraction of max)"
    pointing_tolerance_px: float = 0.0
    pointing_ties: str = "share of maximal pixels that hit"


_CONNECTIVITY = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}  # neighbours -> scipy's rank


def _structure(connectivity: Optional[int], spatial_dims: int) -> np.ndarray:
    """scipy's structuring element: ``None`` = full (8 in 2-D, 26 in 3-D), else a count of neighbours."""
    ranks = _CONNECTIVITY[spatial_dims]
    if connectivity is None:
        return np.ones((3,) * spatial_dims, dtype=bool)
    if connectivity not in ranks:
        raise InputError(f"connectivity must be one of {sorted(ranks)} (neighbours) in {spatial_dims}-D, "
                         f"or None (full), got {connectivity}")
    return ndimage.generate_binary_structure(spatial_dims, ranks[connectivity])


def _largest_component_box(mask: np.ndarray, structure: np.ndarray) -> tuple[int, ...]:
    """Box ``(x0, y0, [z0,] x1, y1, [z1])`` of the largest connected component of a bool grid
    ``(H, W)`` or ``(D, H, W)``; all zeros if the mask is empty."""
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return (0,) * (2 * mask.ndim)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    sel = labels == int(sizes.argmax())  # first label on ties = first in raster order
    spans = [np.flatnonzero(sel.any(axis=tuple(a for a in range(mask.ndim) if a != k))) for k in range(mask.ndim)]
    spans.reverse()  # grid axes (z,) y, x -> box coordinates x, y (, z)
    return tuple(int(s[0]) for s in spans) + tuple(int(s[-1]) + 1 for s in spans)


def _boxes_at_thresholds(maps: torch.Tensor, thresholds: torch.Tensor, connectivity: Optional[int]) -> torch.Tensor:
    """(B, *grid) maps, (T,) thresholds -> (B, T, 2d) long boxes on the maps' device.

    Labelling runs in scipy on CPU (the maps are small; the masks would have to go there anyway).
    """
    cpu = maps.detach().to("cpu", torch.float64).numpy()
    thr = thresholds.detach().to("cpu", torch.float64).numpy()
    d = cpu.ndim - 1
    out = np.zeros((cpu.shape[0], thr.size, 2 * d), dtype=np.int64)
    structure = _structure(connectivity, d)
    for i, m in enumerate(cpu):
        peak = m.max()
        if peak <= 0:
            continue
        for t, level in enumerate(thr * peak):  # one scipy C call per (map, threshold), never per pixel
            out[i, t] = _largest_component_box(m >= level, structure)
    return torch.from_numpy(out).to(maps.device)


def box_from_map(map: torch.Tensor, threshold: float = 0.15, *, connectivity: Optional[int] = None,
                 spatial_dims: int = 2) -> torch.Tensor:
    """Box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the largest connected component of
    ``map >= threshold * max(map)``.

    ``map``: (H, W) -> (4,) long tensor; (B, H, W) -> (B, 4). With ``spatial_dims=3``: (D, H, W) -> (6,)
    ``(x0, y0, z0, x1, y1, z1)``, (B, D, H, W) -> (B, 6). A map with max <= 0 gives the empty box
    (all zeros); a uniform positive map gives the full grid. ``connectivity``: None (full, default),
    4 or 8 in 2-D, 6, 18 or 26 in 3-D.
    """
    maps, single = as_map_batch(map, "map", spatial_dims)
    boxes = _boxes_at_thresholds(maps, torch.tensor([float(threshold)], dtype=torch.float64), connectivity)[:, 0]
    return boxes[0] if single else boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 2d) and (M, 2d) boxes -> (N, M) float; d = 2 (``x0, y0, x1, y1``) or 3
    (``x0, y0, z0, x1, y1, z1``), read from the boxes' last axis.

    IoU = |a ∩ b| / |a ∪ b| with size = Π (end − start) over the axes (ends exclusive). Empty boxes have
    IoU 0 with everything (also with each other). For elementwise IoU of two (N, 2d) lists take the diagonal.
    """
    a = torch.as_tensor(a).float()
    width = a.shape[-1] if a.ndim else 0
    if width not in (4, 6):
        raise InputError(f"boxes must be (N, 4) as x0, y0, x1, y1 or (N, 6) as x0, y0, z0, x1, y1, z1; got {tuple(a.shape)}")
    d = width // 2
    a = a.reshape(-1, width)
    b = torch.as_tensor(b).float().to(a.device)
    if (b.shape[-1] if b.ndim else 0) != width:
        raise InputError(f"cannot compare boxes of {width} and {b.shape[-1] if b.ndim else 0} coordinates")
    b = b.reshape(-1, width)
    size_a = (a[:, d:] - a[:, :d]).clamp(min=0).prod(1)[:, None]
    size_b = (b[:, d:] - b[:, :d]).clamp(min=0).prod(1)[None, :]
    inter = (torch.minimum(a[:, None, d:], b[None, :, d:]) - torch.maximum(a[:, None, :d], b[None, :, :d])).clamp(min=0)
    inter = inter.prod(-1)
    union = size_a + size_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def threshold_ious(
    maps: torch.Tensor,
    gt_boxes: BoxesLike,
    thresholds: Union[Sequence[float], torch.Tensor] = DEFAULT_THRESHOLDS,
    *,
    connectivity: Optional[int] = None,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """Best-match IoU of each map's box at each threshold: (B, T) (or (T,) for one map).

    The building block of `localization_iou` and `max_box_acc`; concatenate its rows over
    batches and call `max_box_acc_from_ious` to get a dataset-level MaxBoxAcc.
    """
    m, single = as_map_batch(maps, "maps", spatial_dims)
    boxes = as_box_list(gt_boxes, m.shape[0], single, tuple(m.shape[1:]))
    thr = _thresholds(thresholds)
    pred = _boxes_at_thresholds(m, thr, connectivity)  # (B, T, 2d)
    ious = torch.stack([box_iou(pred[i], boxes[i].to(pred.device)).amax(1) for i in range(m.shape[0])])
    return ious[0] if single else ious


def _thresholds(thresholds: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    thr = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if thr.numel() == 0:
        raise InputError("thresholds is empty")
    return thr


def localization_iou(
    map: torch.Tensor, gt_boxes: BoxesLike, threshold: float = 0.15, *, connectivity: Optional[int] = None,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """IoU between the map's box (`box_from_map`) and the best-matching ground-truth box.

    (H, W) map + (N, 4) boxes -> 0-dim tensor; (B, H, W) maps + B box sets -> (B,); with
    ``spatial_dims=3`` (D, H, W) maps and (N, 6) boxes.
    """
    return threshold_ious(map, gt_boxes, [float(threshold)], connectivity=connectivity,
                          spatial_dims=spatial_dims)[..., 0]


def threshold_mask_ious(
    maps: torch.Tensor,
    mask: torch.Tensor,
    thresholds: Union[Sequence[float], torch.Tensor] = DEFAULT_THRESHOLDS,
    *,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """IoU of the region ``map >= τ · max(map)`` with the mask's region (``mask >= 0.5``), per threshold τ:
    (B, T) (or (T,) for one map). A map with max <= 0 covers nothing (IoU 0).

    ``mask`` at the maps' grid, one for all maps or one per map; `max_box_acc_from_ious` turns
    the table into a MaxBoxAcc-style score against masks.
    """
    m, single = as_map_batch(maps, "maps", spatial_dims)
    inside = (as_mask_batch(mask, m, single) >= 0.5).flatten(1)  # (B, N)
    thr = _thresholds(thresholds).to(m.device, m.dtype)
    flat = m.flatten(1)
    peak = flat.amax(1, keepdim=True)
    out = []
    for level in thr:  # (B, N) at a time: bounded memory on large volumes
        region = (flat >= level * peak) & (peak > 0)
        inter = (region & inside).sum(1).float()
        union = (region | inside).sum(1).float()
        out.append(inter / union.clamp(min=1))
    ious = torch.stack(out, 1)
    return ious[0] if single else ious


def mask_iou(map: torch.Tensor, mask: torch.Tensor, threshold: float = 0.15, *, spatial_dims: int = 2) -> torch.Tensor:
    """IoU of ``map >= threshold · max(map)`` with the mask's region (see `threshold_mask_ious`).

    One map -> 0-dim tensor; a batch -> (B,). For a clip, the mask of a moving object is its tube: the
    union of its per-frame boxes (``spatial_dims=3``).
    """
    return threshold_mask_ious(map, mask, [float(threshold)], spatial_dims=spatial_dims)[..., 0]


@dataclass(frozen=True)
class MaxBoxAccResult:
    """MaxBoxAcc = mean over IoU criteria δ of max over thresholds τ of BoxAcc(τ, δ).

    BoxAcc(τ, δ) = share of images whose box at τ has IoU >= δ with a ground-truth box (fractions in
    [0, 1]). One δ = MaxBoxAcc (Choe et al. 2020); δ in (0.3, 0.5, 0.7) = MaxBoxAccV2.
    """

    value: float
    best_threshold: tuple[float, ...]  # per IoU criterion
    iou_criteria: tuple[float, ...]
    thresholds: torch.Tensor  # (T,)
    curve: torch.Tensor  # (len(iou_criteria), T): BoxAcc per threshold
    protocol: LocalizationProtocol


def max_box_acc_from_ious(
    ious: torch.Tensor,
    thresholds: Union[Sequence[float], torch.Tensor] = DEFAULT_THRESHOLDS,
    iou: Union[float, Sequence[float]] = 0.5,
    *,
    connectivity: Optional[int] = None,
    spatial_dims: int = 2,
) -> MaxBoxAccResult:
    """MaxBoxAcc from an (N, T) table of `threshold_ious` (N images, T thresholds)."""
    ious = torch.as_tensor(ious)
    thr = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if ious.ndim == 1:
        ious = ious.unsqueeze(0)
    if ious.ndim != 2 or ious.shape[1] != thr.numel() or ious.shape[0] == 0:
        raise InputError(f"ious must be (N >= 1, {thr.numel()}) for {thr.numel()} thresholds, got {tuple(ious.shape)}")
    crit = (float(iou),) if isinstance(iou, (int, float)) else tuple(float(c) for c in iou)
    curve = torch.stack([(ious >= c).float().mean(0) for c in crit])  # (I, T)
    best = curve.argmax(1)
    return MaxBoxAccResult(
        value=float(curve.amax(1).mean()),
        best_threshold=tuple(float(thr[j]) for j in best.cpu()),
        iou_criteria=crit,
        thresholds=thr,
        curve=curve,
        protocol=LocalizationProtocol(connectivity=connectivity, maxboxacc_iou=crit,
                                      spatial_dims=check_spatial_dims(spatial_dims)),
    )


def max_box_acc(
    maps: torch.Tensor,
    gt_boxes: BoxesLike,
    thresholds: Union[Sequence[float], torch.Tensor] = DEFAULT_THRESHOLDS,
    iou: Union[float, Sequence[float]] = 0.5,
    *,
    connectivity: Optional[int] = None,
    spatial_dims: int = 2,
) -> MaxBoxAccResult:
    """MaxBoxAcc (Choe et al. 2020, "Evaluating WSOL right") of a batch of maps; see MaxBoxAccResult.

    Thresholds are fractions of each map's max (Choe et al. min-max normalise first; identical for
    camkit maps, whose min is 0). For datasets larger than a batch use `threshold_ious` per batch
    and `max_box_acc_from_ious` on the concatenation.
    """
    ious = threshold_ious(maps, gt_boxes, thresholds, connectivity=connectivity, spatial_dims=spatial_dims)
    return max_box_acc_from_ious(ious, thresholds, iou, connectivity=connectivity, spatial_dims=spatial_dims)


def _box_masks(boxes: list[torch.Tensor], size: tuple[int, ...], tolerance: float, device: torch.device) -> torch.Tensor:
    """(B, *size) bool: pixel (voxel) centre within ``tolerance`` (Euclidean) of the union of each map's boxes."""
    d = len(size)
    out = []
    for bx in boxes:
        bx = bx.to(device)
        d2 = torch.zeros((bx.shape[0],) + (1,) * d, device=device)
        inside = torch.ones((bx.shape[0],) + (1,) * d, dtype=torch.bool, device=device)
        for k, n in enumerate(size):  # grid axis k holds box coordinate d - 1 - k (x is the last axis)
            c = torch.arange(n, device=device, dtype=torch.float32) + 0.5
            lo, hi = bx[:, d - 1 - k, None], bx[:, 2 * d - 1 - k, None]
            shape = (bx.shape[0],) + tuple(n if j == k else 1 for j in range(d))
            if tolerance > 0:
                d2 = d2 + (torch.maximum(lo - c, c - hi).clamp(min=0) ** 2).view(shape)
            else:  # exact membership of pixel centres, lo <= c < hi
                inside = inside & ((lo <= c) & (c < hi)).view(shape)
        out.append((d2 <= tolerance**2).any(0) if tolerance > 0 else inside.any(0))
    return torch.stack(out)


def pointing_game(map: torch.Tensor, gt_boxes: BoxesLike, tolerance: float = 0.0, *,
                  spatial_dims: int = 2) -> torch.Tensor:
    """Pointing Game (Zhang et al. 2016): 1.0 if the map's maximum lies within ``tolerance`` pixels
    (Euclidean, pixel centres) of a ground-truth box, else 0.0.

    Ties: when several pixels share the maximum, the score is the share of them that hit — the expected
    hit of a uniformly random tie-break (so a uniform map scores the boxes' area fraction, not 1).
    Values within a relative ``1e-6`` of the maximum count as tied (bilinear upsampling makes
    exact plateaus that rounding would otherwise split at random).
    (H, W) -> 0-dim float tensor; (B, H, W) -> (B,). The hit rate is the mean. ``spatial_dims=3``:
    (D, H, W) maps, (N, 6) boxes, the maximal voxel.
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    m, single = as_map_batch(map, "map", spatial_dims)
    size = tuple(m.shape[1:])
    boxes = as_box_list(gt_boxes, m.shape[0], single, size)
    score = _hit_share(m, _box_masks(boxes, size, float(tolerance), m.device))
    return score[0] if single else score


def _hit_share(m: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) share of each map's maximal pixels (ties within TIE_TOLERANCE) that lie ``inside``."""
    peak = m.flatten(1).amax(1).view(-1, *([1] * (m.ndim - 1)))
    is_max = m >= peak - TIE_TOLERANCE * peak.abs()  # float noise must not decide which pixels tie
    return (is_max & inside).flatten(1).sum(1).float() / is_max.flatten(1).sum(1).float()


def mask_pointing_game(map: torch.Tensor, mask: torch.Tensor, tolerance: float = 0.0, *,
                       spatial_dims: int = 2) -> torch.Tensor:
    """Pointing Game against a region mask: 1.0 if the map's maximum lies in the mask (or within
    ``tolerance`` pixels of it, Euclidean distance between pixel centres), ties shared as in
    `pointing_game`. ``mask``: bool or float (pixels >= 0.5 are inside), at the map's size.
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    m, single = as_map_batch(map, "map", spatial_dims)
    inside = as_mask_batch(mask, m, single) >= 0.5
    if tolerance > 0:
        far = [ndimage.distance_transform_edt(~r) for r in inside.cpu().numpy()]
        inside = torch.from_numpy(np.stack(far) <= tolerance).to(m.device)
    score = _hit_share(m, inside)
    return score[0] if single else score


def energy_pointing_game(map: torch.Tensor, gt_boxes: BoxesLike, *, spatial_dims: int = 2) -> torch.Tensor:
    """Energy-based Pointing Game (Wang et al. 2020, Score-CAM): Σ_{inside boxes} map / Σ map.

    "Inside" is the union of the image's boxes. Maps must be >= 0 (InputError otherwise); a map with
    zero energy scores 0. (H, W) -> 0-dim tensor; (B, H, W) -> (B,).
    """
    m, single = as_map_batch(map, "map", spatial_dims)
    if float(m.min()) < 0:
        raise InputError("energy_pointing_game needs non-negative maps (energy = sum of map values)")
    size = tuple(m.shape[1:])
    boxes = as_box_list(gt_boxes, m.shape[0], single, size)
    score = _energy_share(m, _box_masks(boxes, size, 0.0, m.device).to(m.dtype))
    return score[0] if single else score


def _energy_share(m: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) Σ map·weights / Σ map; 0 for a map with zero energy."""
    total = m.flatten(1).sum(1)
    energy = (m * weights).flatten(1).sum(1)
    return torch.where(total > 0, energy / total.clamp(min=torch.finfo(m.dtype).tiny), torch.zeros_like(total))


def mask_energy(map: torch.Tensor, mask: torch.Tensor, *, spatial_dims: int = 2) -> torch.Tensor:
    """Energy-based Pointing Game against a region mask: Σ map·mask / Σ map (a float mask weighs each
    pixel by its share in the region). Maps must be >= 0; ``mask`` at the map's size.
    """
    m, single = as_map_batch(map, "map", spatial_dims)
    if float(m.min()) < 0:
        raise InputError("mask_energy needs non-negative maps (energy = sum of map values)")
    score = _energy_share(m, as_mask_batch(mask, m, single))
    return score[0] if single else score
