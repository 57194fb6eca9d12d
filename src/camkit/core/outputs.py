"""Turn whatever a model returns into a logits tensor."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import TargetError


def to_logits(output: Any) -> torch.Tensor:
    """Return the class-score tensor of a model output.

    Accepts a tensor, a tuple/list (first element), a dict (key ``logits``, else its only tensor
    value) or an object with a ``.logits`` attribute (Hugging Face style).
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise TargetError(
            f"model returned a dict with keys {sorted(output)}; camkit needs a 'logits' key or a single "
            "tensor value. Pass targets=callable(output) -> (B,) scores to explain another output."
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TargetError(
        f"cannot find class scores in a model output of type {type(output).__name__}; "
        "return a tensor, a tuple whose first element is the logits, a dict with 'logits', or pass "
        "targets=callable(output) -> (B,) scores."
    )
