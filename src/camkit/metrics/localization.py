"""Localisation metrics: box from a map, IoU, MaxBoxAcc, Pointing Game, Energy-based Pointing Game,
and the last two for a region given as a mask (a segmentation class's pixels).

Conventions (all explicit parameters, defaults from the original papers):

* Maps are (H, W) or (B, H, W) at the image's pixel grid; boxes are ``(x0, y0, x1, y1)`` in pixels with
  x1/y1 exclusive (a pixel with integer index (x, y) is inside when ``x0 <= x < x1``, ``y0 <= y < y1``).
* A map's box is the bounding box of the largest connected component (8-connectivity by default, as
  OpenCV contours) of ``map >= threshold * max(map)`` — the CAM / Grad-CAM rule (Grad-CAM: 15 %).
  Ties between equally large components go to the first in raster order. A map whose maximum is
  <= 0 (e.g. all zeros) has no box: the empty box ``(0, 0, 0, 0)``, IoU 0 with anything. A uniform
  positive map gives the full-image box.
* The IoU of a map is the best IoU over the image's ground-truth boxes.
* For a detection, the explained box is the ground truth: ``localization_iou(map, [box])``,
  ``pointing_game(map, [box])``, ``energy_pointing_game(map, [box])``; for a segmentation class,
  `mask_pointing_game` and `mask_energy` with its mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError
from ._checks import BoxesLike, as_box_list, as_map_batch, as_mask_batch
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
    connectivity: int = 8
    box_match: str = "best IoU over ground-truth boxes"
    maxboxacc_iou: tuple[float, ...] = (0.5,)
    maxboxacc_thresholds: str = "0.00:0.99:0.01 (fraction of max)"
    pointing_tolerance_px: float = 0.0
    pointing_ties: str = "share of maximal pixels that hit"


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise InputError(f"connectivity must be 4 or 8, got {connectivity}")


def _largest_component_box(mask: np.ndarray, structure: np.ndarray) -> tuple[int, int, int, int]:
    """Box of the largest connected component of a (H, W) bool mask; (0, 0, 0, 0) if the mask is empty."""
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return (0, 0, 0, 0)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    sel = labels == int(sizes.argmax())  # first label on ties = first in raster order
    rows = np.flatnonzero(sel.any(axis=1))
    cols = np.flatnonzero(sel.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _boxes_at_thresholds(maps: torch.Tensor, thresholds: torch.Tensor, connectivity: int) -> torch.Tensor:
    """(B, H, W) maps, (T,) thresholds -> (B, T, 4) long boxes on the maps' device.

    Labelling runs in scipy on CPU (the maps are small; the masks would have to go there anyway).
    """
    cpu = maps.detach().to("cpu", torch.float64).numpy()
    thr = thresholds.detach().to("cpu", torch.float64).numpy()
    out = np.zeros((cpu.shape[0], thr.size, 4), dtype=np.int64)
    structure = _structure(connectivity)
    for i, m in enumerate(cpu):
        peak = m.max()
        if peak <= 0:
            continue
        for t, level in enumerate(thr * peak):  # one scipy C call per (image, threshold), never per pixel
            out[i, t] = _largest_component_box(m >= level, structure)
    return torch.from_numpy(out).to(maps.device)


def box_from_map(map: torch.Tensor, threshold: float = 0.15, *, connectivity: int = 8) -> torch.Tensor:
    """Box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the largest connected component of
    ``map >= threshold * max(map)``.

    ``map``: (H, W) -> (4,) long tensor; (B, H, W) -> (B, 4). A map with max <= 0 gives the empty box
    (0, 0, 0, 0); a uniform positive map gives the full image. ``connectivity``: 8 (default) or 4.
    """
    maps, single = as_map_batch(map, "map")
    boxes = _boxes_at_thresholds(maps, torch.tensor([float(threshold)], dtype=torch.float64), connectivity)[:, 0]
    return boxes[0] if single else boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M) float.

    IoU = |a ∩ b| / |a ∪ b| with area = (x1 - x0)·(y1 - y0) (x1, y1 exclusive). Empty boxes have IoU 0
    with everything (also with each other). For elementwise IoU of two (N, 4) lists take the diagonal.
    """
    a = torch.as_tensor(a).float().reshape(-1, 4)
    b = torch.as_tensor(b).float().reshape(-1, 4).to(a.device)
    area_a = ((a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0))[:, None]
    area_b = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0))[None, :]
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = iw * ih
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def threshold_ious(
    maps: torch.Tensor,
    gt_boxes: BoxesLike,
    thresholds: Union[Sequence[float], torch.Tensor] = DEFAULT_THRESHOLDS,
    *,
    connectivity: int = 8,
) -> torch.Tensor:
    """Best-match IoU of each map's box at each threshold: (B, T) (or (T,) for one (H, W) map).

    The building block of `localization_iou` and `max_box_acc`; concatenate its rows over
    batches and call `max_box_acc_from_ious` to get a dataset-level MaxBoxAcc.
    """
    m, single = as_map_batch(maps, "maps")
    boxes = as_box_list(gt_boxes, m.shape[0], single, tuple(m.shape[-2:]))
    thr = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if thr.numel() == 0:
        raise InputError("thresholds is empty")
    pred = _boxes_at_thresholds(m, thr, connectivity)  # (B, T, 4)
    ious = torch.stack([box_iou(pred[i], boxes[i].to(pred.device)).amax(1) for i in range(m.shape[0])])
    return ious[0] if single else ious


def localization_iou(
    map: torch.Tensor, gt_boxes: BoxesLike, threshold: float = 0.15, *, connectivity: int = 8
) -> torch.Tensor:
    """IoU between the map's box (`box_from_map`) and the best-matching ground-truth box.

    (H, W) map + (N, 4) boxes -> 0-dim tensor; (B, H, W) maps + B box sets -> (B,).
    """
    return threshold_ious(map, gt_boxes, [float(threshold)], connectivity=connectivity)[..., 0]


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
    connectivity: int = 8,
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
        protocol=LocalizationProtocol(connectivity=connectivity, maxboxacc_iou=crit),
    )


def max_box_acc(
    maps: torch.Tensor,
    gt_boxes: BoxesLike,
    thresholds: Union[Sequence[float], torch.Tensor] = DEFAULT_THRESHOLDS,
    iou: Union[float, Sequence[float]] = 0.5,
    *,
    connectivity: int = 8,
) -> MaxBoxAccResult:
    """MaxBoxAcc (Choe et al. 2020, "Evaluating WSOL right") of a batch of maps; see MaxBoxAccResult.

    Thresholds are fractions of each map's max (Choe et al. min-max normalise first; identical for
    camkit maps, whose min is 0). For datasets larger than a batch use `threshold_ious` per batch
    and `max_box_acc_from_ious` on the concatenation.
    """
    ious = threshold_ious(maps, gt_boxes, thresholds, connectivity=connectivity)
    return max_box_acc_from_ious(ious, thresholds, iou, connectivity=connectivity)


def _box_masks(boxes: list[torch.Tensor], h: int, w: int, tolerance: float, device: torch.device) -> torch.Tensor:
    """(B, H, W) bool: pixel centre within ``tolerance`` px (Euclidean) of the union of each image's boxes."""
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    out = []
    for bx in boxes:
        bx = bx.to(device)
        dx = torch.maximum(bx[:, 0, None] - xs, xs - bx[:, 2, None]).clamp(min=0)  # (N, W)
        dy = torch.maximum(bx[:, 1, None] - ys, ys - bx[:, 3, None]).clamp(min=0)  # (N, H)
        if tolerance > 0:
            d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
            inside = (d2 <= tolerance**2).any(0)
        else:  # exact membership of pixel centres, x0 <= x + 0.5 < x1
            inx = (bx[:, 0, None] <= xs) & (xs < bx[:, 2, None])
            iny = (bx[:, 1, None] <= ys) & (ys < bx[:, 3, None])
            inside = (iny[:, :, None] & inx[:, None, :]).any(0)
        out.append(inside)
    return torch.stack(out)


def pointing_game(map: torch.Tensor, gt_boxes: BoxesLike, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing Game (Zhang et al. 2016): 1.0 if the map's maximum lies within ``tolerance`` pixels
    (Euclidean, pixel centres) of a ground-truth box, else 0.0.

    Ties: when several pixels share the maximum, the score is the share of them that hit — the expected
    hit of a uniformly random tie-break (so a uniform map scores the boxes' area fraction, not 1).
    Values within a relative ``1e-6`` of the maximum count as tied (bilinear upsampling makes
    exact plateaus that rounding would otherwise split at random).
    (H, W) -> 0-dim float tensor; (B, H, W) -> (B,). The hit rate is the mean.
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    m, single = as_map_batch(map, "map")
    h, w = m.shape[-2:]
    boxes = as_box_list(gt_boxes, m.shape[0], single, (h, w))
    score = _hit_share(m, _box_masks(boxes, h, w, float(tolerance), m.device))
    return score[0] if single else score


def _hit_share(m: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) share of each map's maximal pixels (ties within TIE_TOLERANCE) that lie ``inside``."""
    peak = m.flatten(1).amax(1).view(-1, 1, 1)
    is_max = m >= peak - TIE_TOLERANCE * peak.abs()  # float noise must not decide which pixels tie
    return (is_max & inside).flatten(1).sum(1).float() / is_max.flatten(1).sum(1).float()


def mask_pointing_game(map: torch.Tensor, mask: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing Game against a region mask: 1.0 if the map's maximum lies in the mask (or within
    ``tolerance`` pixels of it, Euclidean distance between pixel centres), ties shared as in
    `pointing_game`. ``mask``: bool or float (pixels >= 0.5 are inside), at the map's size.
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    m, single = as_map_batch(map, "map")
    inside = as_mask_batch(mask, m, single) >= 0.5
    if tolerance > 0:
        far = [ndimage.distance_transform_edt(~r) for r in inside.cpu().numpy()]
        inside = torch.from_numpy(np.stack(far) <= tolerance).to(m.device)
    score = _hit_share(m, inside)
    return score[0] if single else score


def energy_pointing_game(map: torch.Tensor, gt_boxes: BoxesLike) -> torch.Tensor:
    """Energy-based Pointing Game (Wang et al. 2020, Score-CAM): Σ_{inside boxes} map / Σ map.

    "Inside" is the union of the image's boxes. Maps must be >= 0 (InputError otherwise); a map with
    zero energy scores 0. (H, W) -> 0-dim tensor; (B, H, W) -> (B,).
    """
    m, single = as_map_batch(map, "map")
    if float(m.min()) < 0:
        raise InputError("energy_pointing_game needs non-negative maps (energy = sum of map values)")
    h, w = m.shape[-2:]
    boxes = as_box_list(gt_boxes, m.shape[0], single, (h, w))
    score = _energy_share(m, _box_masks(boxes, h, w, 0.0, m.device).to(m.dtype))
    return score[0] if single else score


def _energy_share(m: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) Σ map·weights / Σ map; 0 for a map with zero energy."""
    total = m.flatten(1).sum(1)
    energy = (m * weights).flatten(1).sum(1)
    return torch.where(total > 0, energy / total.clamp(min=torch.finfo(m.dtype).tiny), torch.zeros_like(total))


def mask_energy(map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Energy-based Pointing Game against a region mask: Σ map·mask / Σ map (a float mask weighs each
    pixel by its share in the region). Maps must be >= 0; ``mask`` at the map's size.
    """
    m, single = as_map_batch(map, "map")
    if float(m.min()) < 0:
        raise InputError("mask_energy needs non-negative maps (energy = sum of map values)")
    score = _energy_share(m, as_mask_batch(mask, m, single))
    return score[0] if single else score
