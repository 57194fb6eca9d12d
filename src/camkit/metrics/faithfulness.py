"""Faithfulness metrics: Average Drop, Increase in Confidence (Grad-CAM++), Deletion/Insertion AUC (RISE).

Where the map is applied (``space``) — the same convention for every function here:

* ``space="pixel"`` (default, the papers): ``images`` are pixels in [0, 1]; the map multiplies /
  perturbs the pixels, and the model sees ``normalize(perturbed)`` (``normalize=None``: the model
  normalises internally, as camkit models do).
* ``space="tensor"``: the map multiplies / perturbs ``normalize(images)`` (the normalised tensor, or
  ``images`` themselves when ``normalize`` is None), which the model sees as is. Zero then means
  "the dataset mean", not "black".

The explained class (``targets``) is the model's top-1 on the unmodified image when None (the usual
choice in the papers), else the given class(es) — pass the true labels to explain those. ``score`` is
``"softmax"`` (default: the papers) or ``"logit"``. Every function runs the model in eval mode under
no_grad, in chunks of ``batch_size``, and restores each submodule's train/eval flag.

Clips and volumes: ``images`` ``(B, C, D, H, W)`` (a clip's D is its frames) take maps ``(B, D, H, W)``
(trilinearly upsampled when smaller); every rule above then runs over voxels instead of pixels (the
deletion order ranks all voxels of the clip, the blur substrate blurs along D as well).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..errors import InputError
from ._checks import as_map_batch, check_unit_range, match_maps_to_images
from ._forward import (
    Normalize,
    Score,
    Space,
    TargetsLike,
    check_choice,
    check_images,
    evaluating,
    logits_of,
    model_input,
    class_indices,
    select_scores,
)
from .protocol import Protocol, callable_name

__all__ = [
    "ConfidenceProtocol",
    "ConfidenceChange",
    "confidence_change",
    "average_drop",
    "increase_in_confidence",
    "average_drop_from_scores",
    "increase_in_confidence_from_scores",
    "PerturbationProtocol",
    "PerturbationCurve",
    "deletion_auc",
    "insertion_auc",
    "gaussian_blur",
]

Substrate = Literal["zeros", "blur", "mean"]
_SPACES = ("pixel", "tensor")
_SCORES = ("softmax", "logit")
_SUBSTRATES = ("zeros", "blur", "mean")


# --------------------------------------------------------------------------- Average Drop / Increase


@dataclass(frozen=True)
class ConfidenceProtocol(Protocol):
    """Conventions of Average Drop % and Increase in Confidence %."""

    NAME: ClassVar[str] = "Average Drop / Increase in Confidence"
    REFERENCE: ClassVar[str] = "Chattopadhyay et al. 2018 (Grad-CAM++), Sec. 4.1"
    space: str = "pixel"
    score: str = "softmax"
    normalize: str = "none"
    targets: str = "top-1 on the image"
    explanation: str = "image x map (bilinear to image size), map in [0, 1], not renormalised"


def average_drop_from_scores(y: torch.Tensor, o: torch.Tensor) -> float:
    """Average Drop % = 100 · mean_i max(0, Y_i − O_i) / Y_i.

    Only defined for Y_i > 0: with ``score="logit"`` (or a softmax that underflowed to 0) such images
    are left out with a warning; if none is left, InputError. This is why a relative drop of raw
    logits is ill-posed: a logit can be 0 or negative, and the ratio then has no meaning.
    """
    y, o = torch.as_tensor(y).float().flatten(), torch.as_tensor(o).float().flatten()
    if y.shape != o.shape or y.numel() == 0:
        raise InputError(f"Y and O must be non-empty and of equal length, got {y.numel()} and {o.numel()}")
    valid = y > 0
    if not bool(valid.all()):
        if not bool(valid.any()):
            raise InputError("Average Drop is undefined: no image has a positive score Y (use score='softmax')")
        warnings.warn(
            f"Average Drop: {int((~valid).sum())} of {y.numel()} images have score Y <= 0 and were left out",
            RuntimeWarning,
            stacklevel=2,
        )
    drop = (y[valid] - o[valid]).clamp(min=0) / y[valid]
    return float(drop.mean() * 100)


def increase_in_confidence_from_scores(y: torch.Tensor, o: torch.Tensor) -> float:
    """Increase in Confidence % = 100 · (1/N) Σ_i [O_i > Y_i]."""
    y, o = torch.as_tensor(y).float().flatten(), torch.as_tensor(o).float().flatten()
    if y.shape != o.shape or y.numel() == 0:
        raise InputError(f"Y and O must be non-empty and of equal length, got {y.numel()} and {o.numel()}")
    return float((o > y).float().mean() * 100)


@dataclass(frozen=True)
class ConfidenceChange:
    """Per-image scores Y (image) and O (explanation image) of the explained class: both metrics from
    one pair of forward passes. Concatenate ``y``/``o`` over batches for dataset-level numbers."""

    y: torch.Tensor  # (B,)
    o: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B,) long
    protocol: ConfidenceProtocol

    @property
    def average_drop(self) -> float:
        return average_drop_from_scores(self.y, self.o)

    @property
    def increase_in_confidence(self) -> float:
        return increase_in_confidence_from_scores(self.y, self.o)


def _check_convention(space: str, score: str) -> None:
    check_choice("space", space, _SPACES)
    check_choice("score", score, _SCORES)


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike = None,
    *,
    space: Space = "pixel",
    score: Score = "softmax",
    normalize: Normalize = None,
    batch_size: int = 64,
) -> ConfidenceChange:
    """Y = score of the explained class on the image, O = on the explanation image (image × map).

    ``images``: (B, C, H, W); ``maps``: (B, h, w) in [0, 1], bilinearly upsampled to (H, W) if needed
    (same aspect ratio). See the module docstring for ``space``/``normalize``/``targets``/``score``.
    """
    _check_convention(space, score)
    images = check_images(images)
    m, _ = as_map_batch(maps, "maps", images.ndim - 2)
    check_unit_range(m)
    m = match_maps_to_images(m, images).unsqueeze(1)
    with evaluating(model):
        x = model_input(images, normalize)
        logits = logits_of(model, x, batch_size)
        t = class_indices(targets, images.shape[0], logits, logits.device)
        y = select_scores(logits, t, score)
        explained = model_input(images * m, normalize) if space == "pixel" else x * m
        o = select_scores(logits_of(model, explained, batch_size), t, score)
    proto = ConfidenceProtocol(
        space=space,
        score=score,
        normalize=callable_name(normalize),
        targets="top-1 on the image" if targets is None else "given",
    )
    return ConfidenceChange(y=y, o=o, targets=t, protocol=proto)


def average_drop(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike = None,
    *,
    space: Space = "pixel",
    score: Score = "softmax",
    normalize: Normalize = None,
    batch_size: int = 64,
) -> float:
    """Average Drop % = 100 · mean max(0, Y − O)/Y (lower is better); see `confidence_change`."""
    return confidence_change(
        model, images, maps, targets, space=space, score=score, normalize=normalize, batch_size=batch_size
    ).average_drop


def increase_in_confidence(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike = None,
    *,
    space: Space = "pixel",
    score: Score = "softmax",
    normalize: Normalize = None,
    batch_size: int = 64,
) -> float:
    """Increase in Confidence % = 100 · share of images with O > Y (higher is better)."""
    return confidence_change(
        model, images, maps, targets, space=space, score=score, normalize=normalize, batch_size=batch_size
    ).increase_in_confidence


# --------------------------------------------------------------------------- Deletion / Insertion


@dataclass(frozen=True)
class PerturbationProtocol(Protocol):
    """Conventions of the Deletion / Insertion game."""

    NAME: ClassVar[str] = "Deletion/Insertion AUC"
    REFERENCE: ClassVar[str] = "Petsiuk et al. 2018 (RISE), Sec. 4.1"
    mode: str = "deletion"
    steps: int = 224
    substrate: str = "zeros"
    score: str = "softmax"
    space: str = "pixel"
    normalize: str = "none"
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    order: str = "map value, highest first; ties in a random order fixed by seed"
    seed: int = 0
    auc: str = "trapezoid over the fraction of pixels changed (0..1)"
    grid: str = "pixels"  # "voxels" for clips and volumes


@dataclass(frozen=True)
class PerturbationCurve:
    """Score of the explained class after changing a growing fraction of pixels, and its AUC."""

    auc: torch.Tensor  # (B,)
    fractions: torch.Tensor  # (S + 1,) fraction of pixels changed, 0 .. 1
    scores: torch.Tensor  # (B, S + 1)
    targets: torch.Tensor  # (B,)
    protocol: PerturbationProtocol

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def gaussian_blur(x: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images or (B, C, D, H, W) clips / volumes along every
    grid axis, replicate padding (no dark border)."""
    if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
        raise InputError(f"blur needs an odd kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    r = kernel_size // 2
    g = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, -1)
    for axis in range(2, x.ndim):  # one 1-D pass per axis
        moved = x.movedim(axis, -1)
        rows = nn.functional.pad(moved.reshape(-1, 1, moved.shape[-1]), (r, r), mode="replicate")
        x = nn.functional.conv1d(rows, g).view(moved.shape).movedim(-1, axis)
    return x


def _substrate(base: torch.Tensor, kind: str, kernel: int, sigma: float) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros_like(base)
    if kind == "mean":
        return base.mean(dim=tuple(range(2, base.ndim)), keepdim=True).expand_as(base)
    return gaussian_blur(base, kernel, sigma)


def _pixel_ranks(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, *grid) maps -> (B, N) rank of each pixel (voxel) in the order highest value first.

    Ties are ordered by one random permutation from ``seed`` (a uniform map = random deletion).
    """
    b, n = maps.shape[0], maps[0].numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(maps.device)
    order = torch.argsort(maps.flatten(1)[:, perm], dim=1, descending=True, stable=True)
    idx = perm[order]
    ranks = torch.empty_like(idx)
    ranks.scatter_(1, idx, torch.arange(n, device=maps.device).expand(b, n))
    return ranks


def _perturbation_curve(
    mode: Literal["deletion", "insertion"],
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike,
    steps: int,
    substrate: str,
    score: str,
    space: str,
    normalize: Normalize,
    batch_size: int,
    blur_kernel: int,
    blur_sigma: float,
    seed: int,
) -> PerturbationCurve:
    _check_convention(space, score)
    check_choice("substrate", substrate, _SUBSTRATES)
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    images = check_images(images)
    m, _ = as_map_batch(maps, "maps", images.ndim - 2)
    m = match_maps_to_images(m, images)
    b, grid = images.shape[0], tuple(images.shape[2:])
    n = m[0].numel()
    s = min(steps, n)
    counts = (2 * torch.arange(s + 1) * n + s) // (2 * s)  # round(i · n / s): pixels changed at step i
    fractions = counts.double() / n
    ranks = _pixel_ranks(m, seed).view(b, 1, *grid)
    ones = (1,) * (len(grid) + 1)
    counts = counts.to(images.device)
    with evaluating(model):
        base = images if space == "pixel" else model_input(images, normalize)
        sub = _substrate(base, substrate, blur_kernel, blur_sigma)
        top1 = logits_of(model, model_input(images, normalize), batch_size) if targets is None else None
        t = class_indices(targets, b, top1, images.device)
        flat = torch.arange(b * (s + 1), device=images.device)
        out = []
        for chunk in flat.split(batch_size):  # (image, step) pairs, a bounded batch at a time
            bi, si = chunk // (s + 1), chunk % (s + 1)
            changed = ranks[bi] < counts[si].view(-1, *ones)
            if mode == "deletion":
                x = torch.where(changed, sub[bi], base[bi])
            else:
                x = torch.where(changed, base[bi], sub[bi])
            x = model_input(x, normalize) if space == "pixel" else x
            out.append(select_scores(logits_of(model, x, batch_size), t[bi], score))
    scores = torch.cat(out).view(b, s + 1)
    fr = fractions.to(scores.device, scores.dtype)
    auc = torch.trapezoid(scores, x=fr, dim=1)
    proto = PerturbationProtocol(
        mode=mode,
        steps=s,
        substrate=substrate,
        score=score,
        space=space,
        normalize=callable_name(normalize),
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        seed=seed,
        grid="pixels" if len(grid) == 2 else "voxels",
    )
    return PerturbationCurve(auc=auc, fractions=fr, scores=scores, targets=t, protocol=proto)


def deletion_auc(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike = None,
    *,
    steps: int = 224,
    substrate: Substrate = "zeros",
    score: Score = "softmax",
    space: Space = "pixel",
    normalize: Normalize = None,
    batch_size: int = 64,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    seed: int = 0,
) -> PerturbationCurve:
    """Deletion (RISE): replace pixels by ``substrate`` in order of the map, highest first, in ``steps``
    equal steps; AUC = ∫₀¹ score(fraction deleted) by the trapezoid rule (lower is better).

    Defaults are RISE's: black (``"zeros"``) substrate, 224 steps (224 pixels a step at 224×224).
    Returns per-image AUC, the curve and the protocol.
    """
    return _perturbation_curve(
        "deletion", model, images, maps, targets, steps, substrate, score, space, normalize, batch_size,
        blur_kernel, blur_sigma, seed,
    )


def insertion_auc(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike = None,
    *,
    steps: int = 224,
    substrate: Substrate = "blur",
    score: Score = "softmax",
    space: Space = "pixel",
    normalize: Normalize = None,
    batch_size: int = 64,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    seed: int = 0,
) -> PerturbationCurve:
    """Insertion (RISE): start from ``substrate`` (default: the image blurred with an 11-tap σ=5
    Gaussian, as RISE) and restore pixels in order of the map, highest first; AUC as in deletion
    (higher is better)."""
    return _perturbation_curve(
        "insertion", model, images, maps, targets, steps, substrate, score, space, normalize, batch_size,
        blur_kernel, blur_sigma, seed,
    )
