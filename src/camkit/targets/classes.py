"""Which scores to explain: ``None`` (top-1), an int, a list of ints, ``TopK``, ``BottomK``, a callable,
a list of one callable per image, or a `RowTarget` (per-image targets of other tasks:
``camkit.targets.Segmentation``, ``Detection``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import TargetError
from .per_image import PerImage, ScoreFn


@dataclass(frozen=True)
class _Ranked:
    """``k`` classes of each image chosen by rank of their score."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise TargetError(f"{type(self).__name__} needs a positive int k, got {self.k!r}")


class TopK(_Ranked):
    """The ``k`` highest-scoring classes of each image; maps get shape ``(B, k, H, W)``."""


class BottomK(_Ranked):
    """The ``k`` lowest-scoring classes of each image (the survey's 'least predicted class')."""


class RowTarget:
    """A target that holds something per image (classes, masks, boxes) and scores outputs row by row.

    ``resolve(output, batch)`` checks it against the explained forward's output and returns the
    target actually scored (e.g. with the predicted mask or the detections frozen, so that the
    re-runs of perturbation methods score the same thing); ``__call__(output)`` returns ``(B, K)``
    scores (an output of one row is scored against every image); ``rows(rows)`` is the target of a
    batch whose row ``r`` is image ``rows[r]`` (copies of images, as Ablation-CAM and Smooth
    Grad-CAM++ run them). ``keep_k``: maps keep the K dimension.
    """

    keep_k: bool = False

    def resolve(self, output: Any, batch: int) -> "RowTarget":
        return self

    def __call__(self, output: Any) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, rows: Sequence[int]) -> "RowTarget":
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


TargetSpec = Union[None, int, Sequence[int], torch.Tensor, TopK, BottomK, RowTarget, ScoreFn, Sequence[ScoreFn]]
"""What `targets=` accepts: None (each image's top-1 class), an int (that class for every image), B ints
(one per image), a `(B,)` / `(B, K)` tensor of classes, `TopK(k)` / `BottomK(k)`, a `RowTarget`
(`Segmentation`, `Detection`, `ReST`, `Contrast`), a callable `output -> (B,) scores`, or B callables
(one per image, each given that image's row of the output)."""


@dataclass
class Targets:
    """Resolved targets: class ``indices`` ``(B, K)`` (None for a callable) and whether K is kept."""

    indices: Optional[torch.Tensor]
    keep_k: bool
    fn: Optional[ScoreFn] = None

    def scores(self, output: Any, logits: Optional[torch.Tensor]) -> torch.Tensor:
        """The explained scores ``(B, K)``: gathered logits, or the callable's output."""
        if self.fn is not None:
            s = self.fn(output)
            if not isinstance(s, torch.Tensor):
                raise TargetError(f"target callable must return a tensor of scores, got {type(s).__name__}")
            return s.reshape(s.shape[0], -1)
        assert logits is not None and self.indices is not None
        return logits.gather(1, self.indices.to(logits.device))

    def repeat(self, n: int) -> "Targets":
        """Targets for a batch where every image is repeated ``n`` times in a row."""
        if isinstance(self.fn, (PerImage, RowTarget)):
            images = len(self.fn.images) if isinstance(self.fn, PerImage) else len(self.fn)
            return self.rows(torch.arange(images).repeat_interleave(n))
        idx = None if self.indices is None else self.indices.repeat_interleave(n, dim=0)
        return Targets(idx, self.keep_k, self.fn)

    def rows(self, rows: torch.Tensor) -> "Targets":
        """The targets of a batch whose row ``r`` is image ``rows[r]`` (copies of some images). A plain
        callable acts row by row and is kept as is; per-image callables and RowTargets are re-indexed."""
        idx = None if self.indices is None else self.indices[rows.to(self.indices.device)]
        fn = self.fn.rows(rows.tolist()) if isinstance(self.fn, (PerImage, RowTarget)) else self.fn
        return Targets(idx, self.keep_k, fn)


def _check_logits(logits: Optional[torch.Tensor], batch: int, why: str = "") -> torch.Tensor:
    task = (
        "; for a segmentation output (B, classes, H, W) use camkit.targets.Segmentation(cls)"
        if logits is not None and logits.dim() == 4 else
        "; for a detector's list of dicts use camkit.targets.Detection(boxes, labels) or Detection.each()"
        if logits is None else ""
    )
    if logits is None and why:
        raise TargetError(f"class targets need the model's class scores: {why}{task}")
    if logits is None or logits.dim() != 2:
        shape = None if logits is None else tuple(logits.shape)
        raise TargetError(
            f"class targets need a (B, num_classes) model output, got shape {shape}{task}; "
            "pass targets=callable(output) -> (B,) scores for other outputs"
        )
    if logits.shape[0] != batch:
        raise TargetError(f"model output has batch size {logits.shape[0]} but the input has {batch}")
    return logits


def resolve_targets(
    spec: TargetSpec, logits: Optional[torch.Tensor], batch: int, why: str = "", output: Any = None
) -> Targets:
    """Resolve a target spec against the model's logits ``(B, N)``; a ``(B, K)`` int tensor or nested
    list gives K given classes per image (kept as a K dimension, like TopK). ``why``: the reason
    ``logits`` is None, for the error message. A `RowTarget` is resolved against the model's
    whole ``output``."""
    if isinstance(spec, RowTarget):
        resolved = spec.resolve(output, batch)
        return Targets(None, resolved.keep_k, resolved)
    if callable(spec) and not isinstance(spec, (TopK, BottomK, torch.Tensor)):
        return Targets(None, False, spec)
    if isinstance(spec, (list, tuple)) and spec and any(callable(f) for f in spec):
        if not all(callable(f) for f in spec):
            raise TargetError("targets mixes callables and class indices; give one kind for every image")
        if len(spec) != batch:
            raise TargetError(f"got {len(spec)} target callables for a batch of {batch} images; pass one "
                              "per image (or a single callable for the whole batch)")
        return Targets(None, False, PerImage(tuple(spec), tuple(range(batch))))
    logits = _check_logits(logits, batch, why)
    n = logits.shape[1]
    dev = logits.device
    if spec is None:
        return Targets(logits.argmax(1, keepdim=True), False)
    if isinstance(spec, (TopK, BottomK)):
        if spec.k > n:
            raise TargetError(f"{type(spec).__name__}({spec.k}) asks for more classes than the model has ({n})")
        idx = logits.topk(spec.k, dim=1, largest=isinstance(spec, TopK)).indices
        return Targets(idx, True)
    if isinstance(spec, bool):
        raise TargetError(f"targets must be an int class index, got {spec!r}")
    if isinstance(spec, int):
        idx = torch.full((batch, 1), spec, dtype=torch.long, device=dev)
        keep_k = False
    else:
        try:
            idx = torch.as_tensor(list(spec) if not isinstance(spec, torch.Tensor) else spec)
        except (TypeError, ValueError) as e:
            raise TargetError(
                f"targets must be None, an int, a list of B ints, TopK(k), BottomK(k) or a callable; got {spec!r}"
            ) from e
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() not in (1, 2):
            raise TargetError(
                f"targets must be a 1-D sequence of int class indices (or (B, K) for K classes per image), "
                f"got {tuple(idx.shape)} {idx.dtype}"
            )
        if idx.shape[0] != batch:
            raise TargetError(
                f"got {idx.shape[0]} targets for a batch of {batch} images; pass one class index per image "
                "(or a single int for all)"
            )
        keep_k = idx.dim() == 2  # (B, K): K given classes per image, maps (B, K, H, W) from one forward
        idx = idx.to(dev, torch.long).reshape(batch, -1)
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise TargetError(
            f"class index {int(idx[bad][0])} is out of range: the model has {n} classes (valid: 0..{n - 1})"
        )
    return Targets(idx, keep_k)
