"""ReST, the Residual Softmax Target-class score (Cai 2025, "CAMs as Shapley value-based explainers",
arXiv 2501.06261): ``S_c = z_c - CE(z, c) = z_c + log softmax(z)_c = 2 z_c - logsumexp(z)``.

The logit ``z_c`` alone ignores the other classes; the log-probability alone is flat where the model is
already sure. ReST adds the two, so a map shows the evidence for class ``c`` that also counts against
the others. Any method explains it: ``camkit.GradCAM(m)(x, targets=camkit.targets.ReST(TopK(3)))``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..core.outputs import to_logits
from ..errors import TargetError
from .classes import RowTarget, TargetSpec, resolve_targets


class ReST(RowTarget):
    """ReST scores of classes chosen as by ``targets=``: ``classes`` None (top-1), an int, one int per
    image, ``(B, K)`` ints, ``TopK`` or ``BottomK`` (chosen by logit). After resolution
    (``Explanation.target``) ``classes`` is ``(B, K)``. Needs ``(B, num_classes)`` class scores."""

    def __init__(self, classes: TargetSpec = None) -> None:
        if isinstance(classes, RowTarget) or (callable(classes) and not isinstance(classes, torch.Tensor)):
            raise TargetError(
                f"ReST scores class indices: give None, an int, a list of ints, TopK or BottomK, not {classes!r}"
            )
        self.spec = classes
        self.classes: Optional[torch.Tensor] = None  # (B, K) once resolved

    def __repr__(self) -> str:
        return f"ReST({self.spec!r})"

    @classmethod
    def _resolved(cls, classes: torch.Tensor, keep_k: bool) -> "ReST":
        out = cls(None)
        out.classes, out.keep_k = classes, keep_k
        return out

    def resolve(self, output: Any, batch: int) -> "ReST":
        if self.classes is not None:
            return self
        t = resolve_targets(self.spec, to_logits(output, batch), batch)
        if t.indices is None:
            raise TargetError(f"ReST scores class indices; {self.spec!r} is not a class target")
        return ReST._resolved(t.indices, t.keep_k)

    def __call__(self, output: Any) -> torch.Tensor:
        if self.classes is None:
            raise TargetError("ReST target used before it was resolved against the model output")
        z = to_logits(output)
        if z.dim() != 2:
            raise TargetError(f"ReST needs (B, num_classes) class scores, got shape {tuple(z.shape)}")
        if z.shape[0] != self.classes.shape[0]:
            if z.shape[0] != 1:
                raise TargetError(f"output of {z.shape[0]} images scored against targets of {self.classes.shape[0]}")
            z = z.expand(self.classes.shape[0], -1)  # one output scored against every image's classes
        return 2 * z.gather(1, self.classes.to(z.device)) - z.logsumexp(1, keepdim=True)

    def rows(self, rows: Sequence[int]) -> "ReST":
        assert self.classes is not None
        r = torch.as_tensor(list(rows), dtype=torch.long, device=self.classes.device)
        return ReST._resolved(self.classes[r], self.keep_k)

    def __len__(self) -> int:
        if self.classes is None:
            raise TargetError("ReST target used before it was resolved against the model output")
        return self.classes.shape[0]
