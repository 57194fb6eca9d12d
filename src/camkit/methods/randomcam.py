"""RandomCAM: random channel weights, a sanity baseline."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import InputError
from .base import BaseCAM
from .explanation import Context, Maps
from .gradient import weighted_sum
from .registry import register


@register("randomcam")
class RandomCAM(BaseCAM):
    """RandomCAM (pytorch-grad-cam 1.5): ``w_c ~ U(-1, 1)`` independently per image and channel,
    ``L = relu(sum_c w_c A_c)``: a map with the layer's structure and no information about the target.

    A baseline (``baseline = True``): a method that does not beat it has not shown that it reads the
    model. The weights ignore the target (every target of an image gets the same map) and need no
    gradient. ``seed`` (default 0) makes maps reproducible: the weights are drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` -- image ``b`` of a call gets the ``b``-th row of ``C``
    draws, layer after layer -- so the same batch gives the same maps on any device; ``seed=None``
    draws fresh weights each call. pytorch-grad-cam draws from numpy's global state and runs a
    backward it does not use.
    """

    uses_gradients = False
    cost = "one forward, no backward"
    baseline = True

    def __init__(self, model: nn.Module, layer: Any = "auto", *, seed: Optional[int] = 0, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int (reproducible maps) or None (fresh draws), got {seed!r}")
        self.seed = seed

    def compute(self, ctx: Context) -> Maps:
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        n = ctx.scores.shape[1]
        weights = []
        for a in ctx.acts:
            w = torch.rand(a.shape[:2], generator=gen, dtype=torch.float64) * 2 - 1  # (B, C) in [-1, 1)
            weights.append(w.to(a.device, a.dtype).unsqueeze(1).expand(-1, n, -1))
        return [weighted_sum(w, a) for w, a in zip(weights, ctx.acts)], weights
