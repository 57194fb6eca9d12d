"""FEM, the Feature Explanation Method: channel weights from the activations' own statistics, no gradient."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .base import BaseCAM
from .explanation import Context, Maps
from .gradient import weighted_sum
from .registry import register


def fem_weights(a: torch.Tensor, k: float) -> torch.Tensor:
    """``w_c`` = the share of positions where ``A_c > mean(A_c) + k std(A_c)`` (population std over the
    grid), for activations ``(B, C, *grid)`` -> ``(B, C)``."""
    grid = tuple(range(2, a.dim()))
    std, mean = torch.std_mean(a, dim=grid, correction=0, keepdim=True)
    return (a > mean + k * std).to(a.dtype).mean(dim=grid)


@register("fem")
class FEM(BaseCAM):
    """FEM (Fuad et al. 2020, "Features understanding in 3D CNNs for actions recognition in video",
    IPTA 2020, hal-02963298): ``w_c = |{p : A_cp > mu_c + k sigma_c}| / |grid|``, the share of each
    channel's positions above its mean plus ``k`` standard deviations (the k-sigma rule, ``k = 2``),
    and ``L = relu(sum_c w_c A_c)``.

    Gradient-free and class-agnostic: every target gets the same map (TopK still returns
    ``(B, K, H, W)``); ``weights`` holds ``w`` per target. Defined on any grid (2-D images, 3-D
    volumes and clips), as in the paper. Same formula as pytorch-grad-cam's ``FEM``.
    """

    uses_gradients = False
    cost = "one forward, no backward"

    def __init__(self, model: nn.Module, layer: Any = "auto", *, k: float = 2.0, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise InputError(f"k must be a positive number of standard deviations above the mean (FEM: 2), got {k!r}")
        self.k = float(k)

    def compute(self, ctx: Context) -> Maps:
        n = ctx.scores.shape[1]
        weights = [fem_weights(a, self.k).unsqueeze(1).expand(-1, n, -1) for a in ctx.acts]
        return [weighted_sum(w, a) for w, a in zip(weights, ctx.acts)], weights
