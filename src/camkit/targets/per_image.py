"""Per-image target callables (pytorch-grad-cam's habit): ``targets=[f_0, ..., f_{B-1}]``, each
called on its own image's slice of the model output and returning that image's score(s)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..errors import TargetError

ScoreFn = Callable[[Any], torch.Tensor]
"""A target callable: the model output (or, in a list of B callables, one image's slice of it) ->
the scores to explain, `(B,)` (a scalar per image for the per-image form), differentiable."""


def _row(output: Any, i: int, batch: int) -> Any:
    """Image ``i``'s part of a model output: tensors with a batch dimension are indexed, containers
    recursed into, anything else passed as is."""
    if isinstance(output, torch.Tensor):
        return output[i] if output.dim() > 0 and output.shape[0] == batch else output
    if isinstance(output, (tuple, list)):
        items = [_row(v, i, batch) for v in output]
        return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
    if isinstance(output, dict):
        return {k: _row(v, i, batch) for k, v in output.items()}
    logits = getattr(output, "logits", None)
    return logits[i] if isinstance(logits, torch.Tensor) else output


def _rows_of(output: Any) -> Optional[int]:
    """The batch size of a model output: the first dimension of its first tensor."""
    if isinstance(output, torch.Tensor):
        return output.shape[0] if output.dim() > 0 else None
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) \
        else [getattr(output, "logits", None)]
    return next((n for n in map(_rows_of, values) if n is not None), None)


@dataclass(frozen=True)
class PerImage:
    """One score callable per image (pytorch-grad-cam's habit): ``fns[i](output of image i)`` -> a scalar
    (or ``(K,)``) tensor. Row ``r`` of a batch is image ``images[r]`` of the original batch, so batches
    of copies (noisy or ablated inputs) are scored by the right callable; an output with one row is
    scored by every callable (one input shared by all images)."""

    fns: tuple[ScoreFn, ...]
    images: tuple[int, ...]

    def __call__(self, output: Any) -> torch.Tensor:
        rows = _rows_of(output)
        if rows not in (1, len(self.images)):
            raise TargetError(f"{len(self.images)} per-image target callables for a model output of {rows} rows")
        scores = []
        for r, i in enumerate(self.images):
            s = self.fns[i](_row(output, 0 if rows == 1 else r, rows or 1))
            if not isinstance(s, torch.Tensor):
                raise TargetError(f"target callable {i} must return a tensor score, got {type(s).__name__}")
            scores.append(s.reshape(-1))
        if len({s.numel() for s in scores}) != 1:
            raise TargetError(f"per-image target callables returned different numbers of scores: "
                              f"{[s.numel() for s in scores]}")
        return torch.stack(scores)

    def rows(self, rows: Sequence[int]) -> "PerImage":
        """The callables of a batch whose row ``r`` is row ``rows[r]`` of this one."""
        return PerImage(self.fns, tuple(self.images[int(r)] for r in rows))
