"""EigenCAM: the first principal component of the layer's activations, class-agnostic."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import BaseCAM, Context
from .gradient import Maps
from .registry import register


def principal_projection(
    a: torch.Tensor, center: bool = True, reference: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project each image's activations on their first principal direction.

    ``a``: ``(B, C, h, w)``. With ``M`` the ``(h*w, C)`` activation matrix of an image (centred per
    channel when ``center``) and ``v`` its first right singular vector, returns the projection
    ``M v`` as ``(B, h, w)`` and ``v`` as ``(B, C)``, computed in float64.

    Sign rule (SVD signs are arbitrary): ``M v`` is made to correlate positively with ``reference``
    ``(B, h, w)``, by default the activation magnitude map ``mean_c |A_c|``; where that correlation is
    ~0, its largest-magnitude entry is made positive. The default references are unchanged when ``A``
    is negated, so a layer whose output differs only in sign gives the same map.
    """
    b, c, h, w = a.shape
    m = a.detach().double().flatten(2).transpose(1, 2)  # (B, hw, C)
    if center:
        m = m - m.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    v = vh[:, 0, :]  # (B, C)
    proj = torch.einsum("bnc,bc->bn", m, v)  # (B, hw)
    ref = (a.detach().double().abs().mean(dim=1) if reference is None else reference.detach().double()).flatten(1)
    ref = ref - ref.mean(dim=1, keepdim=True)
    pc = proj - proj.mean(dim=1, keepdim=True)
    corr = (pc * ref).sum(1)
    tie = corr.abs() <= 1e-6 * (pc.norm(dim=1) * ref.norm(dim=1))
    peak = proj.gather(1, proj.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    sign = torch.where(tie, torch.sign(peak), torch.sign(corr))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (proj * sign[:, None]).view(b, h, w).to(a.dtype), (v * sign[:, None]).to(a.dtype)


@register("eigencam")
class EigenCAM(BaseCAM):
    """EigenCAM (Muhammad & Yeasin 2020): ``L = relu(M v_1)``, the activations projected on their first
    principal component (see :func:`principal_projection`).

    ``center=True`` (default) subtracts each channel's spatial mean before the SVD, as
    pytorch-grad-cam does (principal component analysis proper); ``center=False`` is the paper's plain
    SVD of the activations. Class-agnostic: every target gets the same map (TopK still returns
    ``(B, K, H, W)``). ``weights`` holds ``v_1`` per image.
    """

    uses_gradients = False
    cost = "one forward, no backward (an SVD per image)"

    def __init__(self, model: nn.Module, layer: Any = "auto", *, center: bool = True, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        self.center = center

    def contributions(self, ctx: Context) -> tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]:
        """``A_c`` itself: ``eigen_smooth`` then gives the centred EigenCAM map."""
        k = ctx.scores.shape[1]
        return [a.unsqueeze(1).expand(-1, k, -1, -1, -1) for a in ctx.acts], None

    def compute(self, ctx: Context) -> Maps:
        k = ctx.scores.shape[1]
        raw, weights = [], []
        for a in ctx.acts:
            proj, v = principal_projection(a, self.center)
            raw.append(proj.unsqueeze(1).expand(-1, k, -1, -1))
            weights.append(v.unsqueeze(1).expand(-1, k, -1))
        return raw, weights
