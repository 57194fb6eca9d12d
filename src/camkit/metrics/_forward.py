"""Model plumbing for the metrics: eval mode that is always restored, targets, batched class scores."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, Optional, Union

import torch
from torch import nn

from ..core.outputs import to_logits
from ..errors import InputError, TargetError

Score = Literal["softmax", "logit"]
Space = Literal["pixel", "tensor"]
TargetsLike = Union[None, int, Sequence[int], torch.Tensor]
Normalize = Optional[Callable[[torch.Tensor], torch.Tensor]]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and no-grad; restore every submodule's train/eval flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for m, f in flags:
            m.training = f


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {allowed}, got {value!r}")


def class_indices(targets: TargetsLike, batch: int, logits: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(B,) long class indices: None = top-1 of ``logits``; an int for all; one per image otherwise."""
    if targets is None:
        if logits is None:
            raise TargetError("targets=None needs the model's logits")
        return logits.argmax(1).to(device)
    if isinstance(targets, bool):
        raise TargetError("targets must be None, an int, or one int per image, not a bool")
    if isinstance(targets, int):
        return torch.full((batch,), targets, dtype=torch.long, device=device)
    t = torch.as_tensor(targets, device=device).flatten().long()
    if t.numel() != batch:
        raise TargetError(f"got {t.numel()} targets for {batch} images; give one per image (or an int or None)")
    return t


def select_scores(logits: torch.Tensor, targets: torch.Tensor, score: Score) -> torch.Tensor:
    """Score of each row's target class: the softmax probability or the raw logit."""
    if logits.ndim != 2:
        raise TargetError(f"model output must be (B, classes) logits, got shape {tuple(logits.shape)}")
    if bool((targets < 0).any()) or bool((targets >= logits.shape[1]).any()):
        raise TargetError(f"targets {targets.tolist()[:10]} out of range for {logits.shape[1]} classes")
    vals = logits.float().softmax(1) if score == "softmax" else logits.float()
    return vals.gather(1, targets.view(-1, 1)).squeeze(1)


def model_input(x: torch.Tensor, normalize: Normalize) -> torch.Tensor:
    return x if normalize is None else normalize(x)


def logits_of(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``inputs`` in chunks of ``batch_size`` (call inside `evaluating`)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return torch.cat([to_logits(model(chunk)) for chunk in inputs.split(batch_size)])


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Images ``(B, C, H, W)`` or clips / volumes ``(B, C, D, H, W)``: floating point and finite."""
    if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a (B, C, H, W) tensor (clips and volumes: (B, C, D, H, W)), got {shape}")
    if not images.is_floating_point():
        raise InputError(f"images must be floating point (pixel values in [0, 1]), got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise InputError("images contain NaN or infinite values")
    return images
