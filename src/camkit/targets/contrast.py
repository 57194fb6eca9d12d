"""A contrastive class target (Finer-CAM's): the target class's logit minus ``alpha`` times the logits
of the classes the model finds most similar to it, ``y_c - alpha * mean_t y_{d_t}``."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from ..core.outputs import to_logits
from ..errors import TargetError
from .classes import RowTarget, TargetSpec, resolve_targets

WEIGHTINGS = ("mean", "probability")


class Contrast(RowTarget):
    """``S = y_c - alpha * (1/T) sum_t y_{d_t}`` per image and target class ``c``.

    ``classes``: which classes ``c`` to explain (``None`` top-1, an int, one per image, ``TopK``,
    ``BottomK``, ``(B, K)`` indices). ``references`` ``T``: the ``d_t`` are the ``T`` classes whose logits
    are closest to ``y_c`` (``|y_d - y_c|`` smallest, ``c`` excluded; at most ``N - 1``), chosen on the
    explained forward and then frozen, so re-runs (Score-CAM's masked inputs) score the same classes.
    ``weighting="probability"`` is pytorch-grad-cam's ``FinerWeightedTarget``:
    ``S = sum_t p_t (y_c - alpha y_{d_t}) / sum_t p_t`` with ``p = softmax(y)`` of the scored output
    (not detached, as theirs).
    """

    def __init__(self, classes: TargetSpec = None, alpha: float = 0.6, references: int = 3,
                 weighting: str = "mean") -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise TargetError(f"alpha (the comparison strength) must be a finite number >= 0, got {alpha!r}")
        if isinstance(references, bool) or not isinstance(references, int) or references < 1:
            raise TargetError(f"references must be a positive int (the number of most similar classes), got {references!r}")
        if weighting not in WEIGHTINGS:
            raise TargetError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if isinstance(classes, RowTarget) or callable(classes):
            raise TargetError("a contrast compares class logits: give class targets (None, an int, one per image, "
                              "TopK, BottomK), not a callable or a segmentation/detection target")
        self.spec, self.alpha, self.references, self.weighting = classes, float(alpha), references, weighting
        self.classes: Optional[torch.Tensor] = None  # (B, K), once resolved
        self.refs: Optional[torch.Tensor] = None  # (B, K, T)

    def resolve(self, output: Any, batch: int) -> "Contrast":
        logits = to_logits(output, batch)
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise TargetError(
                f"a contrast (Finer-CAM) needs a classifier with at least 2 classes, got an output of shape "
                f"{tuple(logits.shape)}; the number of classes must be >= 2"
            )
        t = resolve_targets(self.spec, logits, batch)
        if t.indices is None:
            raise TargetError("a contrast compares class logits: give class targets, not target callables")
        y = logits.detach().float()
        yc = y.gather(1, t.indices)  # (B, K)
        dist = (y.unsqueeze(1) - yc.unsqueeze(-1)).abs()  # (B, K, N)
        dist.scatter_(2, t.indices.unsqueeze(-1), math.inf)
        refs = dist.topk(min(self.references, y.shape[1] - 1), dim=2, largest=False).indices
        out = Contrast(self.spec, self.alpha, self.references, self.weighting)
        out.classes, out.refs, out.keep_k = t.indices, refs, t.keep_k
        return out

    def __call__(self, output: Any) -> torch.Tensor:
        assert self.classes is not None and self.refs is not None, "resolve() the contrast first"
        logits = to_logits(output)
        if logits.shape[0] == 1 and len(self) != 1:  # one output row scored against every image
            logits = logits.expand(len(self), -1)
        if logits.shape[0] != len(self):
            raise TargetError(f"a contrast resolved for {len(self)} images scored an output of {logits.shape[0]} rows")
        b, k, t = self.refs.shape
        yc = logits.gather(1, self.classes.to(logits.device))  # (B, K)
        yd = logits.gather(1, self.refs.to(logits.device).reshape(b, k * t)).view(b, k, t)
        if self.weighting == "mean":
            return yc - self.alpha * yd.mean(-1)
        p = torch.softmax(logits, dim=-1).gather(1, self.refs.to(logits.device).reshape(b, k * t)).view(b, k, t)
        return (p * (yc.unsqueeze(-1) - self.alpha * yd)).sum(-1) / p.sum(-1).clamp_min(torch.finfo(p.dtype).tiny)

    def rows(self, rows: Sequence[int]) -> "Contrast":
        assert self.classes is not None and self.refs is not None
        out = Contrast(self.spec, self.alpha, self.references, self.weighting)
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.classes.device)
        out.classes, out.refs, out.keep_k = self.classes[idx], self.refs[idx], self.keep_k
        return out

    def __len__(self) -> int:
        assert self.classes is not None, "resolve() the contrast first"
        return self.classes.shape[0]

    def __repr__(self) -> str:
        return (f"Contrast(classes={self.spec!r}, alpha={self.alpha}, references={self.references}, "
                f"weighting={self.weighting!r})")
