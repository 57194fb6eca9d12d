"""ShapleyCAM: channel weights from the gradient and a Hessian-vector product (second order)."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from ..core import engine
from ..errors import InputError
from ..targets import ReST, TargetSpec
from .base import BaseCAM
from .explanation import Context, Explanation, Maps
from .gradient import weighted_sum
from .registry import register


@register("shapleycam")
class ShapleyCAM(BaseCAM):
    """ShapleyCAM (Cai 2025, "CAMs as Shapley value-based explainers", arXiv 2501.06261):
    ``w_c = mean_grid (dS/dA - 1/2 H A)_c`` with ``H = d^2 S / dA^2`` the Hessian of the score with
    respect to the layer's activations ``A``, and ``L = relu(sum_c w_c A_c)``.

    The second-order Taylor expansion of ``S`` around ``A`` makes the weights approximate each
    channel's Shapley value. ``H A`` is 0 where the network after the layer is piecewise linear in
    ``A`` (ReLU layers and a linear head): there ShapleyCAM equals Grad-CAM; it differs where that tail
    has curvature (GELU/SiLU, attention, softmax) or the score does (``score="rest"``).

    ``score``: ``"logit"`` explains the targets as given; ``"rest"`` explains their ReST score
    ``2 z_c - logsumexp(z)`` (`camkit.targets.ReST`), the target the paper recommends
    (class targets only: None, ints, TopK, BottomK); ``Explanation.targets`` then holds the classes.

    Cost: one forward, then per target one backward with ``create_graph`` and one double backward
    (the Hessian-vector product), both through the layers after the target only
    (`camkit.core.engine.hessian_vector_products`). pytorch-grad-cam computes the same weights
    but records autograd from the input and backpropagates through the whole network with
    ``create_graph``; the maps agree.
    """

    cost = "one forward; a backward and a Hessian-vector product through the layers after the target"

    def __init__(self, model: nn.Module, layer: Any = "auto", *, score: Literal["logit", "rest"] = "logit",
                 **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if score not in ("logit", "rest"):
            raise InputError(f"score must be 'logit' (the targets as given) or 'rest' (their ReST score), got {score!r}")
        self.score = score

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        if self.score == "logit" or isinstance(targets, ReST):
            return super().explain(x, targets)
        e = super().explain(x, ReST(targets))
        classes = e.target.classes
        return dataclasses.replace(e, targets=classes if e.target.keep_k else classes[:, 0])

    def compute(self, ctx: Context) -> Maps:
        grads, hvps = engine.hessian_vector_products(ctx.pass_, ctx.scores)
        raw, weights = [], []
        for a, f, g, hv in zip(ctx.acts, ctx.to_grid, grads, hvps):
            d = torch.stack([f(gk - 0.5 * hk) for gk, hk in zip(g, hv)], dim=1).float()  # (B, K, C, *grid)
            w = d.mean(dim=tuple(range(3, d.dim())))
            raw.append(weighted_sum(w, a))
            weights.append(w)
        return raw, weights
