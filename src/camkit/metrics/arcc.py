"""ARCC (arXiv 2605.14641): complexity, coherency and ROAD of an explanation method, in one number.

Per image, with the map ``m`` in [0, 1] (H × W) of the explained class:

    complexity = ‖m‖₁ / (H·W)                     (Poppi et al. 2021: a small map is simpler; lower is better)
    coherency  = (ρ(m, m') + 1) / 2,  m' = the method's map of the same class on the image × m
                                       (ρ: Pearson over pixels; 1 = the map explains its own evidence)
    road       = clip(2 · ROAD combined, 0, 1)    (`.remove_debias.road`, softmax scores, default
                                                   percentiles 20, 40, 60, 80 as pytorch-grad-cam)
    ARCC       = 3 / (1/coherency + 1/(1 − complexity) + 1/road)      (harmonic mean; higher is better)

each reciprocal guarded by +1e-8 as in pytorch-grad-cam's ``ARCC`` (whose docstring says "geometric
mean" while its code and the paper take the harmonic mean). Coherency re-runs the method, so ARCC
takes the method (any callable ``(images, targets) -> (B, H, W) maps``, e.g. a camkit method), not
only maps.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from ..errors import InputError
from ._checks import as_map_batch, check_unit_range, match_maps_to_images
from ._forward import (
    Normalize,
    Score,
    Space,
    TargetsLike,
    check_images,
    class_indices,
    evaluating,
    logits_of,
    model_input,
)
from .protocol import Protocol, callable_name
from .remove_debias import road

__all__ = ["ARCCProtocol", "ARCCResult", "ARCC_PERCENTILES", "arcc", "complexity", "coherency", "harmonic_arcc"]

ARCC_PERCENTILES: tuple[float, ...] = (20, 40, 60, 80)
_EPS = 1e-8
Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ARCCProtocol(Protocol):
    """Conventions of ARCC (`arcc`): the harmonic mean of coherency, `1 - complexity` and ROAD,
    each field one convention the number depends on (printed with it by `describe()`)."""

    NAME: ClassVar[str] = "ARCC"
    REFERENCE: ClassVar[str] = "arXiv 2605.14641; complexity and coherency: Poppi et al. 2021 (arXiv 2104.10252)"
    complexity: str = "mean of the map in [0, 1] (L1 / pixels)"
    coherency: str = "(Pearson(map, map of image x map) + 1) / 2, same class"
    road: str = "clip(2 x ROAD combined, 0, 1), softmax"
    road_percentiles: tuple[float, ...] = ARCC_PERCENTILES
    noise: float = 0.01
    space: str = "pixel"
    normalize: str = "none"
    seed: int = 0
    combine: str = "harmonic mean of coherency, 1 - complexity and road (+1e-8 in each reciprocal)"


@dataclass(frozen=True)
class ARCCResult:
    """Per-image ARCC and its three terms."""

    arcc: torch.Tensor  # (B,)
    complexity: torch.Tensor  # (B,)
    coherency: torch.Tensor  # (B,)
    road: torch.Tensor  # (B,) clip(2 x ROAD combined, 0, 1)
    targets: torch.Tensor  # (B,)
    protocol: ARCCProtocol

    @property
    def mean(self) -> float:
        return float(self.arcc.mean())


def complexity(maps: torch.Tensor, *, spatial_dims: int = 2) -> torch.Tensor:
    """(B,) ``‖m‖₁ / (H·W)`` of (B, H, W) maps in [0, 1] (``spatial_dims=3``: ``/ (D·H·W)`` of (B, D, H, W))."""
    m, _ = as_map_batch(maps, "maps", spatial_dims)
    check_unit_range(m)
    return m.abs().flatten(1).mean(1)


def harmonic_arcc(coherency: torch.Tensor, complexity: torch.Tensor, road: torch.Tensor) -> torch.Tensor:
    """``3 / (1/(coherency + ε) + 1/(1 − complexity + ε) + 1/(road + ε))``, ε = 1e-8, element-wise;
    ``road`` already clipped to [0, 1] (``clip(2 · ROAD combined, 0, 1)``)."""
    c, k, r = (torch.as_tensor(v, dtype=torch.float32) for v in (coherency, complexity, road))
    return 3 / (1 / (c + _EPS) + 1 / ((1 - k) + _EPS) + 1 / (r + _EPS))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / ((a.square().sum(1) * b.square().sum(1)).sqrt() + _EPS)


def _explain(explainer: Explainer, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = explainer(x, targets)
    maps = getattr(out, "maps", out)  # a camkit Explanation or a tensor
    if not isinstance(maps, torch.Tensor) or maps.ndim != x.ndim - 1 or maps.shape[0] != x.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        want = "(H, W) map per image, (B, H, W)" if x.ndim == 4 else "(D, H, W) map per clip or volume, (B, D, H, W)"
        raise InputError(f"the method must return one {want}; got {shape} (give one target per image)")
    return maps.detach().float()


def coherency(
    explainer: Explainer,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    space: Space = "pixel",
    normalize: Normalize = None,
) -> torch.Tensor:
    """(B,) ``(ρ(m, m') + 1) / 2`` where m' = ``explainer(image × m, targets)`` (``space="pixel"``: the
    pixels are masked and the method sees ``normalize(images × m)``; ``"tensor"``: ``normalize(images) × m``)."""
    images = check_images(images)
    m, _ = as_map_batch(maps, "maps", images.ndim - 2)
    check_unit_range(m)
    up = match_maps_to_images(m, images).unsqueeze(1)
    masked = model_input(images * up, normalize) if space == "pixel" else model_input(images, normalize) * up
    again = _explain(explainer, masked, targets)
    if again.shape[1:] != m.shape[1:]:  # compare at the image size
        again, m = match_maps_to_images(again, images), match_maps_to_images(m, images)
    return ((_pearson(m, again) + 1) / 2).float()


def arcc(
    explainer: Explainer,
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    maps: Optional[torch.Tensor] = None,
    road_percentiles: Sequence[float] = ARCC_PERCENTILES,
    noise: float = 0.01,
    score: Score = "softmax",
    space: Space = "pixel",
    normalize: Normalize = None,
    batch_size: int = 64,
    seed: int = 0,
) -> ARCCResult:
    """ARCC of the method ``explainer`` (called as ``explainer(model_input, targets)`` with one class
    per image, returning (B, H, W) maps in [0, 1] or an object with ``.maps``) on ``images``.

    ``maps``: the method's maps of ``targets`` when already computed (else computed here);
    ``targets``: None = the model's top-1. See the module docstring for the formula.
    """
    images = check_images(images)
    with evaluating(model):
        logits = logits_of(model, model_input(images, normalize), batch_size) if targets is None else None
    t = class_indices(targets, images.shape[0], logits, images.device)
    if maps is None:
        maps = _explain(explainer, model_input(images, normalize), t)
    m, _ = as_map_batch(maps, "maps", images.ndim - 2)
    comp = complexity(m, spatial_dims=images.ndim - 2)
    coh = coherency(explainer, images, m, t, space=space, normalize=normalize)
    rd = road(model, images, m, t, percentiles=road_percentiles, noise=noise, score=score, space=space,
              normalize=normalize, batch_size=batch_size, seed=seed)
    r = (2 * rd.combined).clamp(0, 1).float()
    value = harmonic_arcc(coh, comp, r)
    proto = ARCCProtocol(road_percentiles=rd.percentiles, noise=noise, space=space,
                         normalize=callable_name(normalize), seed=seed,
                         road=f"clip(2 x ROAD combined, 0, 1), {score}")
    return ARCCResult(arcc=value, complexity=comp, coherency=coh, road=r, targets=t, protocol=proto)
