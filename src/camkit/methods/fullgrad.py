"""FullGrad (Srinivas & Fleuret 2019): the input-gradient and the bias-gradients of every layer.

For a network ``f`` built of affine layers with biases and piecewise-linear activations, the
full-gradient decomposition is exact:

    f(x) = sum(dS/dx * x) + sum_l sum_{c,i,j} (dS/dz_l * b_l)_cij

with ``z_l`` the output of layer ``l`` (a convolution, or a BatchNorm in eval mode whose effective
bias is ``beta - mu * gamma / sqrt(var + eps)``) and ``b_l`` its bias broadcast over positions. The
saliency map keeps the spatial terms:

    S(x) = psi(dS/dx * x) + sum_l sum_c psi(dS/dz_l * b_l)_c

where ``psi`` takes the absolute value, min-max rescales it over all channels and positions of one
image and target (0 where constant), and bilinearly upsamples to the input (here after the channel
sum, which commutes with bilinear interpolation). As in the authors' code, only layers with 2-D
feature maps (``nn.Conv2d`` with a bias, ``nn.BatchNorm2d``) contribute; linear layers' biases are
not spatial. A layer's term lives on the grid its output has, whatever its stride: the 1×1
convolutions of a squeeze-excitation gate (MobileNetV3, EfficientNet) act on a pooled 1×1 map, so
their term is a constant over the image (as in pytorch-grad-cam, which resizes every term).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core import engine
from ..core.region import InputRegion
from ..layers import Layout, resolve_layers
from ..core.postprocess import upsample
from ..errors import InputError, UnsupportedModelError
from .base import BaseCAM
from .explanation import Context, Maps
from .registry import register


def has_bias(m: nn.Module) -> bool:
    """Whether ``m`` adds a bias to a 2-D feature map: a biased ``Conv2d`` or a ``BatchNorm2d`` with
    running statistics."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        return m.bias is not None
    return isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) and m.running_mean is not None


def effective_bias(m: nn.Module) -> torch.Tensor:
    """The bias ``(C,)`` that layer ``m`` adds to each position (BatchNorm: ``beta - mu * gamma / sigma``)."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        return m.bias.detach()  # type: ignore[union-attr]
    assert isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) and m.running_mean is not None and m.running_var is not None
    if m.training:
        raise UnsupportedModelError(
            "FullGrad needs BatchNorm layers in eval mode (batch statistics are not a bias); keep eval_mode=True"
        )
    scale = torch.rsqrt(m.running_var.detach() + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach()
    bias = -m.running_mean.detach() * scale
    return bias + m.bias.detach() if m.bias is not None else bias


def psi(t: torch.Tensor) -> torch.Tensor:
    """``|t|`` min-max rescaled over channels and positions, summed over channels: ``(B, K, C, *grid)`` ->
    ``(B, K, *grid)``, as ``(sum_c |t_c| - C min|t|) / (max|t| - min|t|)`` (0 where ``|t|`` is constant),
    without materialising the rescaled tensor."""
    a = t.abs()
    lo, hi = torch.aminmax(a.flatten(2), dim=-1)  # (B, K)
    lift = (...,) + (None,) * (t.dim() - 3)  # (B, K) -> (B, K, 1, 1[, 1]): any grid
    span = (hi - lo)[lift]
    total = a.sum(dim=2) - t.shape[2] * lo[lift]
    return torch.where(span > 0, total / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(total))


@dataclass
class _FullPass(engine.Pass):
    input: Optional[torch.Tensor] = None  # the input leaf of the graph


@register("fullgrad")
class FullGrad(BaseCAM):
    """FullGrad (Srinivas & Fleuret 2019); see the module docstring for the formula.

    ``layer="auto"``: every ``Conv2d`` with a bias and every ``BatchNorm2d`` of the model; a name, a
    module or a list uses the biased layers inside them. Needs one forward recorded from the input
    and one full backward (per target, batched for TopK). ``raw`` is the sum at the input size,
    ``weights`` None. ``eigen_smooth`` does not apply (the map is not one layer's channels).
    """

    uses_gradients = True
    cost = "one forward, a backward to the input"
    smoothing = ("aug_smooth",)

    def __init__(self, model: nn.Module, layer: Any = "auto", **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if self.eigen_smooth:
            raise InputError("FullGrad sums the bias-gradients of every layer and the input-gradient; it has "
                             "no single layer's channels for eigen_smooth to project (aug_smooth works)")

    def _layers(self, x: torch.Tensor) -> tuple[list[str], list[nn.Module]]:
        if isinstance(self.layer, str) and self.layer == "auto":
            roots = [("", self.model)]
        else:
            roots = resolve_layers(self.model, self.layer)
        pairs = {id(m): (f"{root}.{n}".strip("."), m) for root, r in roots for n, m in r.named_modules() if has_bias(m)}
        if not pairs:
            raise UnsupportedModelError(
                f"FullGrad needs convolutions with biases or BatchNorm2d layers (the spatial bias-gradients); "
                f"{type(self.model).__name__} at layer={self.layer!r} has none"
            )
        return [n for n, _ in pairs.values()], [m for _, m in pairs.values()]

    def _read(self, a: torch.Tensor, name: str, module: nn.Module, x: torch.Tensor,
              region: Optional[InputRegion] = None) -> Layout:
        """A biased ``Conv2d`` / ``BatchNorm2d`` outputs ``(B, C, h, w)``: its bias term is read on that
        grid, any size (a squeeze-excitation gate's 1×1 included), not only on a feature map of the input."""
        if a.dim() == x.dim() and self.layout is None and self.reshape is None:
            return Layout("nchw", int(a.shape[-2]), int(a.shape[-1]), t=int(a.shape[2]) if a.dim() == 5 else None)
        return super()._read(a, name, module, x, region)

    def _forward(self, x: torch.Tensor, modules: list[nn.Module], names: list[str]) -> engine.Pass:
        xin = x.detach().clone().requires_grad_(True)
        p = engine.forward(self.model, xin, modules, names, record=True, from_input=True)
        return p.extended(_FullPass, input=xin)

    def compute(self, ctx: Context) -> Maps:
        p = ctx.pass_
        assert isinstance(p, _FullPass) and p.input is not None
        with_input = engine.Pass(p.output, p.logits, [p.input] + p.acts, ["input"] + p.names)
        grads = [g.transpose(0, 1) for g in engine.gradients(with_input, ctx.scores)]  # (B, K, ...)
        x = ctx.x
        size = tuple(x.shape[2:])
        total = psi(grads[0] * x.unsqueeze(1)).float()
        for g, m in zip(grads[1:], ctx.modules):
            b = effective_bias(m).to(g.dtype).view(1, 1, -1, *([1] * (g.dim() - 3)))
            total = total + upsample(psi(g * b).float(), size)
        return [total], None
