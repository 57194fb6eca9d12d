"""Detection targets for torchvision detectors (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD), whose
output is a list of one dict per image with ``boxes`` ``(M, 4)`` (x0, y0, x1, y1 in input pixels),
``labels`` ``(M,)`` and ``scores`` ``(M,)``.

For an explained box ``t`` with label ``l``, the matched prediction is the predicted box of label ``l``
with the highest IoU with ``t``, if that IoU is >= ``iou``; the box's score is that prediction's
score (0 without a match). ``Detection`` scores an image by the sum over its explained boxes
(one map per image); ``Detection.each`` keeps one score per box (one map per detection).

The scores are differentiable: torchvision computes them from the heads' logits (softmax / sigmoid)
and selects them by indexing (score threshold, NMS, top-k), so gradients reach every layer before
the heads. Matching uses the predicted boxes detached.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torchvision.ops import box_iou

from ..errors import TargetError
from .classes import RowTarget


_NOTHING = ("the detector found nothing in image {i}, so no box can be explained there (its own score threshold "
            "applies first: box_score_thresh / score_thresh when the model is built)")


def predictions(output: Any, batch: int) -> list[dict[str, torch.Tensor]]:
    """The detector output as a list of ``batch`` dicts with boxes, labels and scores (else TargetError)."""
    ok = isinstance(output, (list, tuple)) and all(
        isinstance(o, dict) and all(isinstance(o.get(k), torch.Tensor) for k in ("boxes", "labels", "scores"))
        for o in output
    )
    if not ok:
        raise TargetError(
            "Detection targets need a torchvision detector's output: a list of dicts with 'boxes', 'labels' and "
            f"'scores' per image; got {type(output).__name__}"
        )
    if len(output) != batch:
        raise TargetError(f"the detector returned {len(output)} results for a batch of {batch} images")
    return list(output)


def _box_tables(boxes: Any, labels: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-image ``(N_i, 4)`` float boxes and ``(N_i,)`` long labels, checked."""
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2 or not isinstance(boxes, (Sequence, torch.Tensor)):
        raise TargetError(
            "Detection boxes must be given per image: a list of (N_i, 4) boxes (x0, y0, x1, y1), e.g. [boxes] for "
            f"one image; got {type(boxes).__name__}" + (f" of shape {tuple(boxes.shape)}" if isinstance(boxes, torch.Tensor) else "")
        )
    if not isinstance(labels, (Sequence, torch.Tensor)) or len(labels) != len(boxes):
        n = len(labels) if isinstance(labels, (Sequence, torch.Tensor)) else type(labels).__name__
        raise TargetError(f"Detection needs one list of labels per image: {len(boxes)} box lists but labels {n}")
    out_b, out_l = [], []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        b = torch.as_tensor(b).detach().float()
        lab = torch.as_tensor(lab).detach()
        if b.dim() != 2 or b.shape[-1] != 4 or b.shape[0] == 0:
            raise TargetError(
                f"Detection boxes of image {i} must have shape (N >= 1, 4) as x0, y0, x1, y1; got {tuple(b.shape)}"
            )
        if lab.dim() != 1 or lab.shape[0] != b.shape[0] or lab.is_floating_point():
            raise TargetError(
                f"Detection labels of image {i} must be {b.shape[0]} int labels, one per box; got {tuple(lab.shape)} {lab.dtype}"
            )
        if not bool(torch.isfinite(b).all()) or bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
            raise TargetError(
                f"Detection boxes of image {i} must be finite with x1 > x0 and y1 > y0 (x0, y0, x1, y1, not x, y, w, h); "
                f"got {b.tolist()}"
            )
        if bool((lab < 0).any()):
            raise TargetError(f"Detection labels of image {i} must be >= 0, got {lab.tolist()}")
        out_b.append(b)
        out_l.append(lab.long())
    return out_b, out_l


def _match(boxes: torch.Tensor, labels: torch.Tensor, pred: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each explained box: the index of its matched prediction and the IoU (-1: no box of its label)."""
    p_boxes, p_labels = pred["boxes"].detach(), pred["labels"].detach()
    if p_boxes.shape[0] == 0:
        return torch.zeros(len(boxes), dtype=torch.long), torch.full((len(boxes),), -1.0)
    iou = box_iou(boxes.to(p_boxes.device, p_boxes.dtype), p_boxes)
    iou = iou.masked_fill(labels.to(p_labels.device)[:, None] != p_labels[None, :], -1.0)
    best, index = iou.max(dim=1)
    return index, best


class Detection(RowTarget):
    """Explain boxes of a torchvision detector: score = sum over ``boxes`` of the score of the best-matching
    prediction (same label, IoU >= ``iou``); a box without a match contributes 0 and warns.

    ``boxes``: one ``(N_i, 4)`` tensor/list per image (x0, y0, x1, y1, input pixels); ``labels``: one
    ``(N_i,)`` list per image. ``each=True`` keeps one score per box: maps ``(B, K, H, W)`` with
    K = max N_i (all-zero maps in the slots of images with fewer boxes). ``boxes``, ``labels``: the
    explained boxes per image.
    """

    def __init__(self, boxes: Any, labels: Any, iou: float = 0.5, *, each: bool = False) -> None:
        if not 0.0 < float(iou) <= 1.0:
            raise TargetError(f"Detection iou must be in (0, 1], got {iou!r}")
        self.boxes, self.labels = _box_tables(boxes, labels)
        self.iou, self.keep_k = float(iou), bool(each)

    @classmethod
    def each(cls, min_score: float = 0.5, iou: float = 0.5) -> RowTarget:
        """Every detection of the explained forward with score >= ``min_score``, one map each, from that
        one forward; ``Explanation.target`` is the resolved `Detection` (its ``boxes``, ``labels``)."""
        return _Detections(float(min_score), float(iou))

    @classmethod
    def from_output(cls, output: Any, min_score: float = 0.5, iou: float = 0.5) -> "Detection":
        """The detections with score >= ``min_score`` of an output you already have, one map each."""
        return _Detections(float(min_score), float(iou)).resolve(output, len(output))

    def __len__(self) -> int:
        return len(self.boxes)

    def resolve(self, output: Any, batch: int) -> "Detection":
        preds = predictions(output, batch)
        if len(self.boxes) != batch:
            raise TargetError(f"Detection has boxes for {len(self.boxes)} images but the batch has {batch}")
        for i, pred in enumerate(preds):
            if pred["scores"].shape[0] == 0:
                raise TargetError(_NOTHING.format(i=i))
            _, best = _match(self.boxes[i], self.labels[i], pred)
            for j in (best < self.iou).nonzero().flatten().tolist():
                warnings.warn(
                    f"Detection: box {j} {[round(v, 1) for v in self.boxes[i][j].tolist()]} (label "
                    f"{int(self.labels[i][j])}) of image {i} matches no predicted box with its label and IoU >= "
                    f"{self.iou} (best: {max(float(best[j]), 0.0):.2f}); it contributes 0 to the score",
                    UserWarning, stacklevel=4,
                )
        return self

    def _image(self, i: int, pred: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N_i,)`` scores of image ``i``'s boxes in one prediction dict."""
        scores = pred["scores"]
        if scores.shape[0] == 0:
            return scores.new_zeros(len(self.boxes[i]))
        index, best = _match(self.boxes[i], self.labels[i], pred)
        picked = scores[index.to(scores.device)]
        return torch.where(best.to(scores.device) >= self.iou, picked, picked * 0)  # 0, still in the graph

    def __call__(self, output: Any) -> torch.Tensor:
        n = len(self.boxes)
        preds = predictions(output, len(output))
        if len(preds) not in (1, n):
            raise TargetError(f"output of {len(preds)} images scored against boxes of {n}")
        rows = [self._image(i, preds[i if len(preds) == n else 0]) for i in range(n)]
        if not self.keep_k:
            return torch.stack([r.sum() for r in rows])[:, None]
        k = max(len(r) for r in rows)
        return torch.stack([torch.cat([r, r.new_zeros(k - len(r))]) for r in rows])

    def rows(self, rows: Sequence[int]) -> "Detection":
        idx = [int(i) for i in rows]
        return Detection([self.boxes[i] for i in idx], [self.labels[i] for i in idx], self.iou, each=self.keep_k)


class _Detections(RowTarget):
    """``Detection.each``: resolves to a per-box Detection of the forward's own detections."""

    keep_k = True

    def __init__(self, min_score: float, iou: float) -> None:
        self.min_score, self.iou = min_score, iou

    def resolve(self, output: Any, batch: int) -> Detection:
        boxes, labels = [], []
        for i, pred in enumerate(predictions(output, batch)):
            scores = pred["scores"].detach()
            if scores.numel() == 0:
                raise TargetError(_NOTHING.format(i=i))
            keep = scores >= self.min_score
            if not bool(keep.any()):
                raise TargetError(
                    f"image {i} has no detection with score >= {self.min_score} (its best score is "
                    f"{float(scores.max()):.3f}); lower min_score to explain it"
                )
            boxes.append(pred["boxes"].detach()[keep].clone())
            labels.append(pred["labels"].detach()[keep].clone())
        return Detection(boxes, labels, self.iou, each=True)
