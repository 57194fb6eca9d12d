"""Turn whatever a model returns into a logits tensor."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import TargetError

_FIX = ("Pass targets=callable(output) -> (B,) scores (or a list of one callable per image, each "
        "given that image's slice of the output) to say which scores to explain.")


def _shapes(values: list[Any]) -> str:
    return ", ".join(str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__ for v in values)


def _class_scores(values: list[Any], batch: Optional[int]) -> list[torch.Tensor]:
    """The values that can be class scores: floating-point ``(B, N)`` tensors (B = ``batch`` when known)."""
    return [v for v in values if isinstance(v, torch.Tensor) and v.dim() == 2 and v.is_floating_point()
            and (batch is None or v.shape[0] == batch)]


def to_logits(output: Any, batch: Optional[int] = None) -> torch.Tensor:
    """Return the class-score tensor of a model output.

    Accepts a tensor, an object with a ``.logits`` attribute (Hugging Face style), a dict (key
    ``logits``, else its only tensor value, else its only value that can be class scores) or a
    tuple/list. In a tuple/list the class scores are its one floating-point 2-D ``(B, N)`` tensor
    (B = ``batch`` when given); when several elements could be class scores -- ``(boxes (B, 4),
    logits (B, N))`` -- guessing would explain the wrong numbers, so it is an error that says how
    to choose. A tuple without any 2-D tensor gives its first element (later checks then say what
    is wrong with its shape).
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
        scores = _class_scores(tensors, batch)
        if len(tensors) == 1 or len(scores) == 1:
            return tensors[0] if len(tensors) == 1 else scores[0]
        raise TargetError(
            f"model returned a dict with keys {sorted(output)}; camkit needs a 'logits' key or exactly one "
            f"tensor of class scores (B, N) among them. {_FIX}"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        scores = _class_scores(list(output), batch)
        if len(scores) == 1:
            return scores[0]
        if len(scores) > 1:
            raise TargetError(
                f"model returned a {type(output).__name__} of {len(output)} outputs with shapes "
                f"[{_shapes(list(output))}]: {len(scores)} of them could be class scores (B, N), so camkit "
                f"will not guess which one to explain. {_FIX} E.g. targets=lambda out: out[1][:, 7] explains "
                "class 7 of the second output."
            )
        return output[0]
    raise TargetError(
        f"cannot find class scores in a model output of type {type(output).__name__}; "
        "return a tensor, a tuple with one (B, num_classes) tensor, a dict with 'logits', or pass "
        "targets=callable(output) -> (B,) scores."
    )



def _maxima(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output.max()] if output.is_floating_point() and output.numel() else []
    if isinstance(output, dict):
        values: Any = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        values = [getattr(output, "logits", None)]
    return [m for v in values for m in _maxima(v)]


def probe_score(output: Any) -> torch.Tensor:
    """A scalar that depends on every floating-point tensor of a model output (the sum of their
    maxima), for probing which layers the output depends on: unlike `to_logits` it never has
    to choose between several candidate score tensors."""
    maxima = _maxima(output)
    if not maxima:
        raise TargetError(f"the model output ({type(output).__name__}) holds no floating-point tensor")
    return torch.stack(maxima).sum()
