"""Guided Backprop and Guided Grad-CAM: input-space attributions ``(B, [K,] 3, H, W)``.

Guided Backprop (Springenberg et al. 2015) is the gradient of the class score with respect to the
input, except that every ReLU passes gradient only where its input was positive AND the incoming
gradient is positive. Guided Grad-CAM (Selvaraju et al. 2017) multiplies it by the upsampled
Grad-CAM map.

These are not ``[0, 1]`` maps: `camkit.methods.base.Explanation` ``maps`` holds the signed
attribution ``(B, 3, H, W)`` (``(B, K, 3, H, W)`` for TopK/BottomK); `to_image` turns it into
a displayable image in ``[0, 1]``.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.outputs import to_logits
from ..core.precision import check_finite
from ..core.state import preserved
from ..targets import RowTarget, TargetSpec, Targets, resolve_targets
from ..errors import InputError, NoGradientError
from .base import BaseCAM, Explanation
from .gradient import GradCAM
from .registry import register


class _GuidedReLU(torch.autograd.Function):
    """``clamp(x, 0, upper)`` whose backward is ``g * [0 < x (< upper)] * [g > 0]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: Optional[float], inplace: bool) -> torch.Tensor:
        mask = x > 0 if upper is None else (x > 0) & (x < upper)
        ctx.save_for_backward(mask)
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(0, upper)
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None]:
        (mask,) = ctx.saved_tensors
        return g.clamp_min(0) * mask, None, None


_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_}
_SIGNATURES = {f: inspect.signature(f) for f in (F.relu, F.relu6, F.hardtanh)}


class GuidedReLUMode(TorchFunctionMode):
    """Inside this mode every ReLU -- ``F.relu``, ``torch.relu``, ``Tensor.relu``, the in-place
    ``relu_`` / ``inplace=True`` forms and ``nn.ReLU`` (which calls ``F.relu``) -- and every ReLU6
    (``F.relu6``, ``nn.ReLU6`` via ``F.hardtanh(x, 0, 6)``) backpropagates with the guided rule.
    Other functions, including other activations (GELU, SiLU), are untouched."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU_INPLACE:
            return _GuidedReLU.apply(args[0], None, True)
        if func in _RELU:
            inplace = False
            if func is F.relu:
                inplace = bool(_SIGNATURES[F.relu].bind(*args, **kwargs).arguments.get("inplace", False))
            return _GuidedReLU.apply(args[0], None, inplace)
        if func is F.relu6 or func is F.hardtanh:
            bound = _SIGNATURES[func].bind(*args, **kwargs).arguments
            lo, hi = (0.0, 6.0) if func is F.relu6 else (bound.get("min_val", -1.0), bound.get("max_val", 1.0))
            if lo == 0:
                return _GuidedReLU.apply(args[0], float(hi), bool(bound.get("inplace", False)))
        return func(*args, **kwargs)


def to_image(attr: torch.Tensor, spread: float = 0.1) -> torch.Tensor:
    """A displayable image in ``[0, 1]`` from an attribution ``(..., 3, H, W)``.

    Per attribution: ``clip((a - mean a) / std a * spread + 0.5, 0, 1)`` (zero attribution -> grey).
    Same shape as ``attr``; permute the last three dims to ``(H, W, 3)`` for plotting.
    """
    a = attr.detach().float()
    dims = (-3, -2, -1)
    mean = a.mean(dim=dims, keepdim=True)
    std = a.std(dim=dims, keepdim=True)
    z = torch.where(std > 0, (a - mean) / std.clamp_min(1e-12), torch.zeros_like(a))
    return (z * spread + 0.5).clamp(0, 1)


@register("guided-backprop")
class GuidedBackprop(BaseCAM):
    """Guided Backprop: ``d y / d x`` with the guided rule at every ReLU (see `GuidedReLUMode`).

    ``maps`` of the `Explanation` is the attribution ``(B, [K,] 3, H, W)`` (not normalised;
    `to_image` makes it displayable), ``raw`` the same tensor, ``weights`` None, ``layers`` [].
    Every image of the batch gets its own attribution; several targets share one forward. ``layer``
    is accepted for a uniform constructor and ignored: the attribution is on the input.
    """

    uses_gradients = True
    output = "attribution"
    cost = "one forward, a backward to the input"
    smoothing = ()

    def __init__(self, model: nn.Module, layer: Any = None, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if self.aug_smooth is not None or self.eigen_smooth:
            raise InputError(f"{type(self).__name__} is an input-space attribution, not a class activation map: "
                             "aug_smooth and eigen_smooth apply to the CAM methods")

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        x = self._check_input(x)
        with preserved(self.model, self.eval_mode), torch.enable_grad(), self._forward_mode(x):
            attr, t, scores, logits = self._guided_grads(x, targets)
        squeeze = (lambda v: v) if t.keep_k else (lambda v: None if v is None else v[:, 0])
        return Explanation(
            maps=squeeze(attr), raw=squeeze(attr), weights=None, scores=squeeze(scores),
            targets=squeeze(t.indices), logits=logits, layers=[], output=self.output, categories=self._categories(),
        )

    def _guided_grads(
        self, x: torch.Tensor, targets: "TargetSpec | Targets"
    ) -> tuple[torch.Tensor, Targets, torch.Tensor, Optional[torch.Tensor]]:
        """Attribution ``(B, K, 3, H, W)``, the resolved targets, scores ``(B, K)`` and logits.
        Call inside `preserved` (parameters are frozen here so no parameter graph is built)."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        xin = x.clone().requires_grad_(True)
        with GuidedReLUMode():
            output = self.model(xin)
        logits: Optional[torch.Tensor] = None
        why = ""
        try:
            logits = to_logits(output, x.shape[0])
        except Exception as exc:  # a callable target may still explain this output
            why = str(exc)
        t = targets if isinstance(targets, Targets) else resolve_targets(targets, logits, x.shape[0], why, output=output)
        scores = t.scores(output, logits)
        if not scores.requires_grad:
            raise NoGradientError(
                "the explained scores do not depend on the input through autograd (does the forward use "
                ".detach(), numpy or torch.no_grad()?)"
            )
        k = scores.shape[1]
        grads = [
            torch.autograd.grad(scores[:, j].sum(), xin, retain_graph=j < k - 1)[0] for j in range(k)
        ]
        check_finite(self.precision, scores, grads)
        return torch.stack(grads, dim=1), t, scores.detach(), None if logits is None else logits.detach()


@register("guided-gradcam")
class GuidedGradCAM(GuidedBackprop):
    """Guided Grad-CAM: ``GuidedBackprop(x) * upsample(GradCAM(x))`` per image and target.

    The Grad-CAM map (in [0, 1], at the input size) comes from `camkit.methods.gradient.GradCAM`
    on ``layer``; both use the same resolved targets. ``maps`` is the product ``(B, [K,] 3, H, W)``,
    ``raw`` and ``weights`` are Grad-CAM's, ``layers`` Grad-CAM's layer.
    """

    cost = "Grad-CAM's, then one forward and a backward to the input"

    def __init__(self, model: nn.Module, layer: Any = "auto", **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        self.gradcam = GradCAM(model, layer, **kw)

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        x = self._check_input(x)  # once: a dtype cast warns once
        cam = self.gradcam.explain(x, targets)
        if isinstance(cam.target, RowTarget):  # both score what Grad-CAM resolved (frozen masks, boxes)
            t = Targets(None, cam.target.keep_k, cam.target)
        elif cam.targets is None:  # a callable target: both score the output with it
            t = resolve_targets(targets, None, x.shape[0])
        else:
            keep_k = cam.targets.dim() == 2
            t = Targets(cam.targets.reshape(x.shape[0], -1), keep_k)
        with preserved(self.model, self.eval_mode), torch.enable_grad(), self._forward_mode(x):
            attr, t, _, _ = self._guided_grads(x, t)
        maps = cam.maps if t.keep_k else cam.maps.unsqueeze(1)  # (B, K, H, W)
        prod = attr * maps.unsqueeze(2).to(attr.dtype)
        return Explanation(
            maps=prod if t.keep_k else prod[:, 0], raw=cam.raw, weights=cam.weights, scores=cam.scores,
            targets=cam.targets, logits=cam.logits, layers=cam.layers, layout=cam.layout, output=self.output,
            categories=cam.categories,
        )
