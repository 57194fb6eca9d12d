"""EigenGrad-CAM and Seg-Eigen-CAM: the first principal component of the gradient-weighted activations."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import InputError
from .gradient import GradientCAM
from .registry import register
from .smoothing import eigen_map, peak_positive, principal_projection


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


@register("segeigencam")
class SegEigenCAM(GradientCAM):
    """Seg-Eigen-CAM (Chung & Ying 2025, "Seg-Eigen-CAM: Eigen-value-based visual explanations for
    semantic segmentation models", Appl. Sci. 15(13) 7562, doi:10.3390/app15137562): ``Z_c = |dS/dA_c| * A_c``
    (Eq. 10: the gradient's magnitude, so negative evidence weighs too), ``M`` the ``(grid, C)`` matrix of
    ``Z`` centred per channel, ``v_1`` its first right singular vector, ``L = relu(s M v_1)`` with the sign
    ``s`` making the largest-magnitude entry of ``M v_1`` positive (Eq. 13: flip when ``|min| > |max|``).

    Built for `camkit.targets.Segmentation` scores (``tasks = ("segmentation",)``); it runs on
    every target kind. The map is already a principal component, so ``eigen_smooth`` does not apply.
    Same formula and sign rule as pytorch-grad-cam's ``SegEigenCAM``; ``weights`` None.
    """

    tasks = ("segmentation",)
    smoothing = ("aug_smooth",)

    def __init__(self, model: nn.Module, layer: Any = "auto", **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if self.eigen_smooth:
            raise InputError("SegEigenCAM's map is already the first principal component of |dS/dA| * A: "
                             "eigen_smooth does not apply (aug_smooth does)")

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        z = g.abs() * a.unsqueeze(1)  # (B, K, C, *grid)
        b, k, c = z.shape[:3]
        flat = z.reshape(b * k, c, -1, 1)  # any grid as an (n, 1) one for the SVD
        proj, _ = principal_projection(flat, center=True)
        return peak_positive(proj).reshape(b, k, *z.shape[3:]), None
