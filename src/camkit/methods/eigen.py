"""EigenCAM: the first principal component of the layer's activations, class-agnostic."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import BaseCAM
from .explanation import Context, Maps
from .registry import register
from .smoothing import principal_projection


@register("eigencam")
class EigenCAM(BaseCAM):
    """EigenCAM (Muhammad & Yeasin 2020): ``L = relu(M v_1)``, the activations projected on their first
    principal component (see `principal_projection`).

    ``center=True`` (default) subtracts each channel's spatial mean before the SVD, as
    pytorch-grad-cam does (principal component analysis proper); ``center=False`` is the paper's plain
    SVD of the activations. Class-agnostic: every target gets the same map (TopK still returns
    ``(B, K, H, W)``). ``weights`` holds ``v_1`` per image.
    """

    uses_gradients = False
    cost = "one forward, no backward (an SVD per image)"
    from_layer = True

    def __init__(self, model: nn.Module, layer: Any = "auto", *, center: bool = True, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        self.center = center

    def contributions(self, ctx: Context) -> Maps:
        """``A_c`` itself: ``eigen_smooth`` then gives the centred EigenCAM map."""
        k = ctx.scores.shape[1]
        return [a.unsqueeze(1).expand(-1, k, *a.shape[1:]) for a in ctx.acts], None

    def compute(self, ctx: Context) -> Maps:
        k = ctx.scores.shape[1]
        raw, weights = [], []
        for a in ctx.acts:
            proj, v = principal_projection(a, self.center)
            raw.append(proj.unsqueeze(1).expand(-1, k, *proj.shape[1:]))
            weights.append(v.unsqueeze(1).expand(-1, k, -1))
        return raw, weights
