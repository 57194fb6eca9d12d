"""KPCA-CAM: the first kernel principal component of the layer's activations, class-agnostic."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ..errors import InputError
from .base import BaseCAM
from .explanation import Context, Maps
from .registry import register
from .smoothing import peak_positive

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def kernel_matrix(x: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    """``k(x_i, x_j)`` for rows of ``x`` ``(N, n, C)`` -> ``(N, n, n)``, with scikit-learn's definitions and
    defaults: ``sigmoid`` ``tanh(gamma <x, y> + 1)``, ``rbf`` ``exp(-gamma |x - y|^2)``, ``poly``
    ``(gamma <x, y> + 1)^3``, ``linear`` ``<x, y>``, ``cosine`` ``<x, y> / (|x| |y|)`` (0 for a zero row)."""
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(x, x).square())
    if kernel == "cosine":
        norm = x.norm(dim=-1, keepdim=True)
        x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    dot = x @ x.transpose(1, 2)
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + 1)
    if kernel == "poly":
        return (gamma * dot + 1) ** 3
    return dot  # linear, cosine


def kernel_pca(a: torch.Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None) -> torch.Tensor:
    """The first kernel principal component of each image's activations ``(B, C, *grid)`` -> ``(B, *grid)``.

    Per image: ``X`` the ``(n, C)`` matrix of the ``n`` grid positions, centred per channel; ``K`` its
    kernel matrix, double-centred (``K - 1K - K1 + 1K1``, ``1`` the ``n x n`` matrix of ``1/n``);
    ``(lambda, alpha)`` its largest eigenpair; the component is ``sqrt(lambda) alpha`` (0 when
    ``lambda <= 0``), signed so that its largest-magnitude entry is positive -- scikit-learn's
    ``KernelPCA(n_components=1).fit_transform(X)``, computed in float64 by a dense eigensolver.
    """
    b, c = a.shape[:2]
    x = a.detach().double().reshape(b, c, -1).transpose(1, 2)  # (B, n, C)
    x = x - x.mean(dim=1, keepdim=True)
    k = kernel_matrix(x, kernel, 1.0 / c if gamma is None else gamma)
    k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(k)
    proj = vectors[..., -1] * values[:, -1:].clamp_min(0).sqrt()
    return peak_positive(proj).reshape(b, *a.shape[2:]).to(a.dtype)


@register("kpcacam")
class KPCACAM(BaseCAM):
    """KPCA-CAM (Karmani et al. 2024, "KPCA-CAM: Visual explainability of deep computer vision models using
    kernel PCA", arXiv 2410.00267): ``L = relu(phi_1)``, the activations' first kernel principal component
    (`kernel_pca`) -- EigenCAM with the linear PCA replaced by a kernel PCA.

    ``kernel``: one of ``sigmoid`` (default, as pytorch-grad-cam), ``rbf``, ``poly``, ``linear``, ``cosine``;
    ``gamma``: the kernel's scale, default ``1 / C``. Class-agnostic: every target gets the same map (TopK
    still returns ``(B, K, H, W)``); ``weights`` None. The map is already a principal component, so
    ``eigen_smooth`` does not apply. Cost: a dense eigendecomposition of an ``n x n`` kernel per image
    (``n`` the grid positions: cheap for 7x7 to 28x28 grids).

    Differences from pytorch-grad-cam (which calls scikit-learn's ``KernelPCA`` per image): none in the
    formula or the sign rule; camkit solves in float64 on the input's device, and always with a dense
    eigensolver (scikit-learn switches to ARPACK above 200 positions: the same component, to its tolerance).
    """

    uses_gradients = False
    cost = "one forward, no backward (an eigendecomposition of a positions x positions kernel per image)"
    smoothing = ("aug_smooth",)

    def __init__(self, model: nn.Module, layer: Any = "auto", *, kernel: str = "sigmoid",
                 gamma: Optional[float] = None, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if kernel not in KERNELS:
            raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float))
                                  or not math.isfinite(gamma) or gamma <= 0):
            raise InputError(f"gamma must be None (1 / channels) or a positive number, got {gamma!r}")
        if self.eigen_smooth:
            raise InputError("KPCA-CAM's map is already a (kernel) principal component of the activations: "
                             "eigen_smooth does not apply (aug_smooth does)")
        self.kernel, self.gamma = kernel, gamma

    def compute(self, ctx: Context) -> Maps:
        n = ctx.scores.shape[1]
        return [kernel_pca(a, self.kernel, self.gamma).unsqueeze(1).expand(-1, n, *a.shape[2:]) for a in ctx.acts], None
