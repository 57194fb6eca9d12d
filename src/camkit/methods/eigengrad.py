"""EigenGrad-CAM: the first principal component of the gradient-weighted activations."""
from __future__ import annotations

from typing import Optional

import torch

from .gradient import GradientCAM
from .registry import register
from .smoothing import eigen_map


@register("eigengradcam")
class EigenGradCAM(GradientCAM):
    """EigenGrad-CAM (pytorch-grad-cam): ``L = relu(M v_1)`` with ``M`` the ``(h*w, C)`` matrix of
    ``Z_c = dS/dA_c * A_c`` (HiResCAM's per-channel terms) centred per channel and ``v_1`` its first
    right singular vector; the sign makes the map correlate positively with ``sum_c Z_c`` (the
    HiResCAM map), so it is class-specific. Equal to ``HiResCAM(eigen_smooth=True)``; ``weights`` None.
    """

    def contribution(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return g * a.unsqueeze(1), None

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return eigen_map(self.contribution(a, g)[0]), None
