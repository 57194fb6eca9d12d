"""The gradient CAM family. Notation: ``A`` activations ``(B, C, h, w)`` at the target layer,
``G = dS/dA`` gradients ``(B, K, C, h, w)`` of the class score ``S`` (a logit) for K targets. On clips
and volumes the grid is ``(t, h, w)`` and every sum or mean "over ij" runs over all its positions.

Each method is one formula over ``A`` and ``G``: channel weights ``w`` with map
``relu(sum_c w_c A_c)``, or a per-pixel weighting.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..core import engine
from ..core.pixels import unchecked
from ..core.precision import score_tolerance
from ..errors import UnsupportedModelError, ZeroGradientWarning
from .base import BaseCAM, positive_int
from .explanation import Context, Maps
from .registry import register

def weighted_sum(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sum_c w[b, k, c] * a[b, c, *p]`` -> ``(B, K, *grid)``."""
    return torch.einsum("bkc,bc...->bk...", w, a)


def per_channel(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``w[b, k, c] * a[b, c, *p]`` -> ``(B, K, C, *grid)``: the terms whose channel sum is `weighted_sum`."""
    return w.view(*w.shape, *([1] * (a.dim() - 2))) * a.unsqueeze(1)


def grid_grads(ctx: Context) -> list[torch.Tensor]:
    """``dS/dA`` per layer as ``(B, K, C, h, w)`` float tensors (a `ZeroGradientWarning` where one is
    exactly zero: that map is blank)."""
    out = []
    for name, f, g in zip(ctx.pass_.names, ctx.to_grid, engine.gradients(ctx.pass_, ctx.scores)):
        out.append(torch.stack([f(gk) for gk in g], dim=1).float())
        warn_zero_gradient(name, out[-1])
    return out


def warn_zero_gradient(name: str, grad: torch.Tensor) -> None:
    """A `ZeroGradientWarning` when the grid gradient `(B, K, C, h, w)` at layer `name` is exactly zero for
    some (image, target): the score does not change with the layer's grid there, so the map is blank."""
    zero = (grad.flatten(2) == 0).all(-1)  # (B, K)
    if bool(zero.any()):
        warnings.warn(
            f"the gradient of the explained score at layer {name!r} is exactly zero for {int(zero.sum())} of "
            f"{zero.numel()} (target, image) pair(s), so their maps are blank (a ReLU that is off everywhere "
            "after the layer, a saturated activation, a max, argmax or rounding on the way to the score); try a "
            "later layer (camkit layers MODEL lists them) or a gradient-free method such as 'scorecam' or 'eigencam'",
            ZeroGradientWarning, stacklevel=5)


class GradientCAM(BaseCAM):
    """A method computed from ``A`` and ``G`` of each layer by `combine`."""

    uses_gradients = True
    from_layer = True

    def compute(self, ctx: Context) -> Maps:
        results = [self.combine(a, g) for a, g in zip(ctx.acts, grid_grads(ctx))]
        raw = [r for r, _ in results]
        weights = [w for _, w in results]
        return raw, (None if any(w is None for w in weights) else weights)  # type: ignore[return-value]

    def contributions(self, ctx: Context) -> Maps:
        pairs = [self.contribution(a, g) for a, g in zip(ctx.acts, grid_grads(ctx))]
        weights = [w for _, w in pairs]
        return [z for z, _ in pairs], (None if any(w is None for w in weights) else weights)  # type: ignore[return-value]

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Raw map ``(B, K, h, w)`` before ReLU and channel weights ``(B, K, C)`` or None."""
        w = self.channel_weights(a, g)
        return weighted_sum(w, a), w

    def contribution(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-channel terms ``(B, K, C, h, w)`` whose channel sum is `combine`'s map, and the weights."""
        w = self.channel_weights(a, g)
        return per_channel(w, a), w

    def channel_weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ElementwiseCAM(GradientCAM):
    """A method whose map is a per-pixel weighting of the activations: ``sum_c`` of `contribution`."""

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.contribution(a, g)[0].sum(dim=2), None

    def contribution(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


@register("gradcam")
class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017): ``w_c = 1/(hw) sum_ij dS/dA_cij``."""

    def channel_weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g.flatten(3).mean(-1)


def gradcampp_weights(a: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ weights from (averaged) first/second/third-order terms.

    ``alpha_cij = D2 / (2 D2 + sum_ab A_cab D3)`` (0 where the denominator is 0, no epsilon),
    ``w_c = sum_ij alpha_cij relu(D1_cij)``. With ``Y = exp(S)`` and a piecewise-linear network the
    derivatives of Y are ``exp(S) g^n``; the common factor ``exp(S)`` cancels in alpha and only scales
    ``w`` by a positive constant per target, so ``D_n = g^n`` is used.
    """
    sum_a = a.flatten(2).sum(-1).view(*a.shape[:2], *([1] * (a.dim() - 2))).unsqueeze(1)  # (B, 1, C, 1, 1[, 1])
    denom = 2 * d2 + sum_a * d3
    alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    return (alpha * torch.relu(d1)).flatten(3).sum(-1)


@register("gradcam++")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018), closed form with the exponential score; see
    `gradcampp_weights`."""

    def channel_weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return gradcampp_weights(a, g, g * g, g * g * g)


@register("smoothgradcam++")
class SmoothGradCAMPlusPlus(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with ``D1, D2, D3`` averaged over
    ``n`` noisy copies ``x + N(0, sigma^2)``, ``sigma = noise * (max x - min x)`` per image
    (survey: 0.15). The map is built on the clean input's activations:
    ``alpha = mean(D2) / (2 mean(D2) + sum_ab A_ab mean(D3))``, ``w = sum_ij alpha relu(mean(D1))``.

    The survey prints ``D1`` in alpha's numerator; with ``n = 1`` the method must reduce to
    Grad-CAM++, whose numerator is the second-order term, so ``D2`` is used.
    ``batch_size`` bounds how many noisy copies go through the model at once; ``seed`` makes the
    noise reproducible (default: a fixed seed, so the same input gives the same map). Every image of
    a batch gets the same n noise draws, so an image's map does not depend on its batch or
    ``batch_size``.
    """

    uses_gradients = True
    cost = "n noisy forwards and backwards through the layers after the target (batched)"

    def __init__(self, model, layer="auto", *, n: int = 8, noise: float = 0.15, batch_size: int = 32,
                 seed: Optional[int] = 0, **kw) -> None:
        super().__init__(model, layer, **kw)
        positive_int("n", n, "number of noisy copies")
        positive_int("batch_size", batch_size, "noisy images per pass")
        self.n, self.noise, self.batch_size, self.seed = n, noise, batch_size, seed

    def compute(self, ctx: Context) -> Maps:
        x = ctx.x
        b = x.shape[0]
        gen = torch.Generator(device=x.device)
        if self.seed is not None:
            gen.manual_seed(self.seed)
        else:
            gen.seed()
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(b, *([1] * (x.dim() - 1)))
        # one draw of n noise images, copy j of every image gets the j-th: an image's map does not
        # depend on the other images of the batch nor on batch_size
        noise_n = torch.randn((self.n,) + tuple(x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
        sums: Optional[list[list[torch.Tensor]]] = None  # per layer: [sum g, sum g^2, sum g^3]
        per_batch = max(1, self.batch_size // b)
        done = 0
        while done < self.n:
            m = min(per_batch, self.n - done)
            noise = noise_n[done:done + m].repeat(b, *([1] * (x.dim() - 1)))  # (b * m, ...), image-major like repeat_interleave
            xn = x.repeat_interleave(m, dim=0) + noise * self.noise * span.repeat_interleave(m, dim=0)
            with unchecked():  # noisy pixels leave [0, 1] on purpose
                p = engine.forward(self.model, xn, ctx.modules, ctx.pass_.names, record=True)
            grads = engine.gradients(p, ctx.targets.repeat(m).scores(p.output, p.logits))
            stats = []
            for f, g in zip(ctx.to_grid, grads):
                gg = torch.stack([f(gk) for gk in g], dim=1).float()
                gg = gg.view(b, m, *gg.shape[1:])  # (b, m, K, C, h, w), copies of an image in a row
                stats.append([gg.sum(1), (gg * gg).sum(1), (gg * gg * gg).sum(1)])
            sums = stats if sums is None else [[u + v for u, v in zip(s0, s1)] for s0, s1 in zip(sums, stats)]
            done += m
        raw, weights = [], []
        for a, (s1, s2, s3) in zip(ctx.acts, sums):  # type: ignore[arg-type]
            w = gradcampp_weights(a, s1 / self.n, s2 / self.n, s3 / self.n)
            raw.append(weighted_sum(w, a))
            weights.append(w)
        return raw, weights


@register("xgradcam")
class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al. 2020): ``w_c = sum_ij (A_cij / sum_ab A_cab) dS/dA_cij``.

    Channels whose activation sum is ~0 relative to their magnitude (``|sum A| <= 1e-6 sum |A|``,
    possible with signed activations) get weight 0 instead of a blown-up ratio.
    """

    def channel_weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        s = a.flatten(2).sum(-1)  # (B, C)
        ok = s.abs() > 1e-6 * a.abs().flatten(2).sum(-1)
        safe = torch.where(ok, s, torch.ones_like(s))
        w = (a.unsqueeze(1) * g).flatten(3).sum(-1) / safe.unsqueeze(1)
        return torch.where(ok.unsqueeze(1), w, torch.zeros_like(w))


@register("layercam")
class LayerCAM(ElementwiseCAM):
    """Layer-CAM (Jiang et al. 2021): ``L = relu(sum_c relu(dS/dA_c) * A_c)``, per pixel.

    Pass a list of layers to fuse them: each layer's map is upsampled, normalised and fused by
    element-wise maximum.
    """

    def contribution(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return torch.relu(g) * a.unsqueeze(1), None


@register("hirescam")
class HiResCAM(ElementwiseCAM):
    """HiResCAM (Draelos & Carin 2020): ``L = relu(sum_c dS/dA_c * A_c)``, element-wise, no averaging."""

    def contribution(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return g * a.unsqueeze(1), None


@register("gradcam-elementwise")
class GradCAMElementWise(ElementwiseCAM):
    """Grad-CAM element-wise (pytorch-grad-cam 1.5): ``L = relu(sum_c relu(dS/dA_c * A_c))``, the
    positive part of each channel's element-wise contribution, summed over channels (HiResCAM keeps
    the negative products, Layer-CAM rectifies the gradient alone)."""

    def contribution(self, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return torch.relu(g * a.unsqueeze(1)), None


@register("cam")
class CAM(BaseCAM):
    """CAM (Zhou et al. 2016): ``L = sum_c W[class, c] A_c`` with ``W`` the weights of the linear layer
    that follows global average pooling.

    The head is verified, not assumed: the model's logits must equal ``fc(mean_ij A)`` for a linear
    layer ``fc`` of the model with ``in_features = C``; otherwise an error says why and points to
    Grad-CAM (which equals CAM on such heads).
    """

    uses_gradients = False
    cost = "one forward, no backward"
    from_layer = True

    def __init__(self, model, layer="auto", *, fc: Optional[torch.nn.Linear] = None, **kw) -> None:
        super().__init__(model, layer, **kw)
        self.fc = fc

    def compute(self, ctx: Context) -> Maps:
        if len(ctx.acts) != 1:
            raise UnsupportedModelError("CAM explains one layer: the one before global average pooling")
        if ctx.targets.indices is None or ctx.pass_.logits is None:
            raise UnsupportedModelError(
                "CAM needs class-index targets on a classifier's (B, num_classes) output: it reads the class's "
                "weights in a global-average-pooling + linear head, which segmentation and detection models (and "
                "callable targets) do not have; use 'gradcam' instead"
            )
        a = ctx.acts[0]
        fc = gap_linear_head(self.model, a, ctx.pass_.logits.float(), self.precision, self.fc)
        if fc is None:
            raise UnsupportedModelError(
                f"CAM needs a head of global average pooling followed by one linear layer after the explained "
                f"layer ({a.shape[1]} channels): no nn.Linear with in_features={a.shape[1]} maps the spatial mean "
                "of its activations to the model's logits. Use 'gradcam' (identical to CAM on such heads) or "
                "choose the layer right before global average pooling."
            )
        w = fc.weight.detach().float()[ctx.targets.indices]  # (B, K, C)
        return [weighted_sum(w, a)], [w]


def gap_linear_head(model: torch.nn.Module, a: torch.Tensor, logits: torch.Tensor, precision: str = "fp32",
                    fc: Optional[torch.nn.Linear] = None) -> Optional[torch.nn.Linear]:
    """The ``nn.Linear`` of ``model`` (or ``fc``) that maps the spatial mean of activations ``a``
    ``(B, C, *grid)`` to ``logits`` ``(B, N)`` -- verified on this pass, not assumed -- or None."""
    candidates = [fc] if fc is not None else [
        m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features == a.shape[1]
    ]
    gap = a.mean(dim=tuple(range(2, a.dim())))
    tol = score_tolerance(precision)
    for head in reversed(candidates):
        if head.out_features != logits.shape[1]:
            continue
        pred = torch.nn.functional.linear(gap, head.weight.float(), None if head.bias is None else head.bias.float())
        if torch.allclose(pred, logits, rtol=tol, atol=tol * (1 + logits.abs().max().item())):
            return head
    return None
