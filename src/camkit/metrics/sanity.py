"""Sanity check: cascading model-parameter randomisation (Adebayo et al. 2018).

A faithful explanation must change when the model's weights are destroyed. Starting at the output
side, the parameters of one layer after another are re-initialised on a deep copy of the model (the
user's model is never touched) and the maps are recomputed; each step reports the Spearman rank
correlation and SSIM of every map to the map of the intact model. Low similarity = passes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from ..errors import InputError
from ._checks import as_map_batch
from ._forward import TargetsLike, check_images, evaluating, logits_of, class_indices
from .protocol import Protocol
from .similarity import spearman_correlation, ssim

__all__ = [
    "RandomizationProtocol",
    "RandomizationResult",
    "randomization_test",
    "default_randomization_layers",
    "reinitialize_",
]

Explainer = Callable[[torch.Tensor, list[int]], torch.Tensor]
MethodFactory = Callable[[nn.Module], Explainer]


@dataclass(frozen=True)
class RandomizationProtocol(Protocol):
    """Conventions of the model-parameter randomisation test."""

    NAME: ClassVar[str] = "Model parameter randomisation"
    REFERENCE: ClassVar[str] = "Adebayo et al. 2018, Sanity Checks for Saliency Maps, Sec. 3.1"
    cascade: bool = True
    layers: tuple[str, ...] = ()
    init: str = "each module's reset_parameters(), else truncated N(0, 0.02); seeded per step"
    seed: int = 0
    targets: str = "top-1 of the intact model, held fixed"
    similarity: str = "Spearman (tie-averaged ranks) and SSIM (Gaussian 11, sigma 1.5, L=1) to the original map"


@dataclass(frozen=True)
class RandomizationResult:
    """Step k randomised ``layers[: k + 1]`` (cascade) or ``layers[k]`` alone (independent)."""

    layers: tuple[str, ...]
    spearman: torch.Tensor  # (S, B)
    ssim: torch.Tensor  # (S, B)
    original: torch.Tensor  # (B, H, W)
    maps: Optional[torch.Tensor]  # (S, B, H, W) when keep_maps
    protocol: RandomizationProtocol

    def summary(self) -> list[dict[str, float | str]]:
        """One row per step: layer, mean Spearman, mean SSIM."""
        return [
            {"layer": name, "spearman": float(self.spearman[k].mean()), "ssim": float(self.ssim[k].mean())}
            for k, name in enumerate(self.layers)
        ]


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def default_randomization_layers(model: nn.Module) -> list[str]:
    """Named blocks from the output side down: the model's children with parameters, with
    ``nn.Sequential``/``nn.ModuleList`` containers opened recursively (ResNet: fc, layer4.2, ...,
    conv1; VGG: classifier.6, ..., features.0). Assumes registration order = forward order."""

    def walk(mod: nn.Module, prefix: str) -> list[str]:
        names = []
        for name, child in mod.named_children():
            if not _has_params(child):
                continue
            full = f"{prefix}{name}"
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                names += walk(child, full + ".")
            else:
                names.append(full)
        return names

    names = walk(model, "")
    if not names:
        raise InputError("the model has no parameterised submodules to randomise; pass layers=[...]")
    return names[::-1]


def reinitialize_(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s parameters (and resettable buffers) in place, deterministically.

    New values are drawn on CPU from ``seed`` (so they do not depend on the device) with each
    submodule's ``reset_parameters()``; parameters of modules without one get a truncated N(0, 0.02).
    """
    fresh = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        covered: set[int] = set()
        for sub in fresh.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in sub.parameters(recurse=False))
        for p in fresh.parameters():
            if id(p) not in covered:
                with torch.no_grad():
                    nn.init.trunc_normal_(p, std=0.02)
    with torch.no_grad():
        for dst, src in zip(module.parameters(), fresh.parameters()):
            dst.copy_(src)
        for dst, src in zip(module.buffers(), fresh.buffers()):
            dst.copy_(src)


def _maps(explain: Explainer, images: torch.Tensor, targets: list[int], step: str) -> torch.Tensor:
    if hasattr(explain, "__enter__") and hasattr(explain, "__exit__"):  # let a method remove its hooks
        with explain as e:  # type: ignore[attr-defined]
            out = e(images, targets)
    else:
        out = explain(images, targets)
    try:
        m, _ = as_map_batch(out, "maps", images.ndim - 2)
    except InputError as e:
        raise InputError(f"the method's maps {step}: {e}") from None
    if m.shape[0] != images.shape[0]:
        raise InputError(f"the method returned {m.shape[0]} maps for {images.shape[0]} images {step}")
    return m.detach()


def randomization_test(
    method_factory: MethodFactory,
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    layers: Optional[Sequence[str]] = None,
    cascade: bool = True,
    seed: int = 0,
    keep_maps: bool = False,
) -> RandomizationResult:
    """Cascading (or, ``cascade=False``, independent) parameter randomisation.

    ``method_factory(model) -> explain``, ``explain(images, targets: list[int]) -> (B, H, W) maps`` (clips
    and volumes ``(B, C, D, H, W)``: ``(B, D, H, W)`` maps); it is
    called on a deep copy of ``model`` (in eval mode) once for the intact model and once per step.
    ``layers``: module names, output side first (default `default_randomization_layers`).
    Targets: None = top-1 of the intact model; the class is held fixed across steps.
    Returns Spearman ρ and SSIM of each step's maps to the original maps, shape (steps, B).
    """
    images = check_images(images)
    work = copy.deepcopy(model).eval()
    names = list(layers) if layers is not None else default_randomization_layers(work)
    modules = dict(work.named_modules())
    missing = [n for n in names if n not in modules]
    if missing or not names:
        raise InputError(f"unknown layer names {missing} (or no layers); choose from model.named_modules()")
    if targets is None:
        with evaluating(work):
            top1 = logits_of(work, images, images.shape[0])
    else:
        top1 = None
    t = class_indices(targets, images.shape[0], top1, images.device).tolist()
    original = _maps(method_factory(work), images, t, "of the intact model")
    pristine = copy.deepcopy(work) if not cascade else None
    rhos, ssims, kept = [], [], []
    for k, name in enumerate(names):
        if pristine is not None:  # independent: start every step from the intact weights
            work = copy.deepcopy(pristine)
        reinitialize_(dict(work.named_modules())[name], seed + k)
        m = _maps(method_factory(work), images, t, f"after randomising {name!r}")
        if m.shape != original.shape:
            raise InputError(f"maps changed shape after randomising {name!r}: {tuple(m.shape)} vs {tuple(original.shape)}")
        rhos.append(spearman_correlation(original, m, spatial_dims=images.ndim - 2))
        ssims.append(ssim(original, m, spatial_dims=images.ndim - 2))
        if keep_maps:
            kept.append(m)
    proto = RandomizationProtocol(
        cascade=cascade,
        layers=tuple(names),
        seed=seed,
        targets="top-1 of the intact model, held fixed" if targets is None else "given",
    )
    return RandomizationResult(
        layers=tuple(names),
        spearman=torch.stack(rhos),
        ssim=torch.stack(ssims),
        original=original,
        maps=torch.stack(kept) if keep_maps else None,
        protocol=proto,
    )
