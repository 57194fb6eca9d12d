"""``aug_smooth`` and ``eigen_smooth``: two options of every CAM method (pytorch-grad-cam's habits).

``eigen_smooth=True`` replaces the map by the first principal component of the method's
per-channel contributions ``Z`` ``(C, h, w)`` -- the terms whose sum over channels is the map:
``w_c A_c`` for channel-weight methods (Grad-CAM, Grad-CAM++, XGrad-CAM, CAM, Ablation-CAM,
Score-CAM, Smooth Grad-CAM++), ``relu(g_c) A_c`` for Layer-CAM, ``g_c A_c`` for HiResCAM and
EigenGrad-CAM, ``A_c`` for EigenCAM. Per image, target and layer, in the target layer's own
(low-resolution) frame before ReLU and upsampling: ``M`` the ``(h*w, C)`` matrix of ``Z``, centred
per channel, ``v`` its first right singular vector, map ``= M v``, its sign chosen so that it
correlates positively with the un-smoothed map ``sum_c Z_c``.

``aug_smooth=True`` (or an `Augment`) is test-time augmentation: the method runs on every
view of the input -- horizontal flips x rescalings, ``Augment().views()`` -- and each view's map
(ReLU, upsampled to the view, min-max normalised) is brought back to the input frame (flip undone,
resized bilinearly to ``H x W``); the maps are averaged and min-max normalised again. Classes are
chosen once, on the un-augmented input, so TopK explains the same k classes in every view.
``raw`` is then the averaged map at the input size; ``weights``, ``scores`` and ``logits`` are the
un-augmented input's.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn.functional as F

from ..core.postprocess import normalize, upsample
from ..errors import CamkitError, InputError, UnsupportedModelError

from .explanation import Context, Explanation, Maps

if TYPE_CHECKING:
    from .base import BaseCAM


@dataclass(frozen=True)
class Augment:
    """The views of ``aug_smooth``: every combination of a horizontal flip in ``flips`` and a scale in
    ``scales`` (the input resized to ``round(scale * H) x round(scale * W)``). The model must accept
    the rescaled sizes; use ``scales=(1.0,)`` for models with a fixed input size (ViT)."""

    flips: tuple[bool, ...] = (False, True)
    scales: tuple[float, ...] = (0.9, 1.0, 1.1)

    def __post_init__(self) -> None:
        if not self.flips or any(not isinstance(f, bool) for f in self.flips):
            raise InputError(f"Augment.flips must be a non-empty tuple of bools, got {self.flips!r}")
        if not self.scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0
                                  or not math.isfinite(s) for s in self.scales):
            raise InputError(f"Augment.scales must be a non-empty tuple of positive numbers, got {self.scales!r}")

    def views(self) -> list[tuple[float, bool]]:
        """``(scale, flip)`` pairs, without repeats."""
        return list(dict.fromkeys((float(s), f) for s in self.scales for f in self.flips))


def augmentations(option: Union[bool, Augment, None]) -> Optional[Augment]:
    """The ``aug_smooth`` option as an `Augment` (None when off)."""
    if option is None or option is False:
        return None
    if option is True:
        return Augment()
    if isinstance(option, Augment):
        return option
    raise InputError(f"aug_smooth must be True, False or camkit.methods.Augment(...), got {option!r}")


def view(x: torch.Tensor, scale: float, flip: bool) -> torch.Tensor:
    """The input seen by one view: rescaled (bilinear, antialiased when shrinking), then flipped."""
    h, w = x.shape[-2:]
    size = (max(1, round(scale * h)), max(1, round(scale * w)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return x.flip(-1) if flip else x


def unview(maps: torch.Tensor, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """A view's maps ``(..., h', w')`` brought back to the input frame ``size``: flip undone, resized."""
    return upsample(maps.flip(-1) if flip else maps, size)


def aug_explain(method: "BaseCAM", x: torch.Tensor, targets: Any) -> Explanation:
    """``method.explain`` with test-time augmentation (see the module docstring)."""
    aug = method.aug_smooth
    assert aug is not None
    plain = copy.copy(method)
    plain.aug_smooth = None
    x = method._check_input(x)
    base = plain.explain(x, targets)
    fixed = targets if base.targets is None else base.targets  # the classes of the un-augmented input
    size = (x.shape[-2], x.shape[-1])
    maps = []
    for scale, flip in aug.views():
        if (scale, flip) == (1.0, False):
            e = base
        else:
            xv = view(x, scale, flip)
            try:
                e = plain.explain(xv, fixed)
            except CamkitError:
                raise
            except Exception as exc:  # a model that only takes one input size
                if scale == 1.0:
                    raise
                raise InputError(
                    f"aug_smooth: the model failed on the view rescaled to {tuple(xv.shape[-2:])} "
                    f"({type(exc).__name__}: {exc}); for a model with a fixed input size use "
                    "aug_smooth=Augment(scales=(1.0,)) (flips only)"
                ) from exc
        maps.append(unview(e.maps, size, flip))
    mean = torch.stack(maps).mean(0)
    return dataclasses.replace(base, maps=normalize(mean), raw=mean)


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
    b, grid = a.shape[0], a.shape[2:]  # grid: (h, w), or (t, h, w) on clips and volumes
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
    return (proj * sign[:, None]).view(b, *grid).to(a.dtype), (v * sign[:, None]).to(a.dtype)


def eigen_map(z: torch.Tensor) -> torch.Tensor:
    """First principal component of contributions ``z`` ``(B, K, C, h, w)`` -> ``(B, K, h, w)``, its sign
    agreeing with ``z.sum(2)`` (see the module docstring)."""
    b, k, c, grid = z.shape[0], z.shape[1], z.shape[2], z.shape[3:]
    flat = z.reshape(b * k, c, *grid)
    proj, _ = principal_projection(flat, center=True, reference=flat.sum(1))
    return proj.view(b, k, *grid)


def eigen_compute(method: "BaseCAM", ctx: Context) -> Maps:
    """The method's raw maps with ``eigen_smooth``: `eigen_map` of its contributions per layer."""
    zs, weights = method.contributions(ctx)
    return [eigen_map(z) for z in zs], weights


def channel_contributions(raw_weights: Maps, acts: list[torch.Tensor], name: str) -> Maps:
    """``w_c A_c`` ``(B, K, C, h, w)`` per layer from a method's channel weights ``(B, K, C)``."""
    _, weights = raw_weights
    if weights is None:
        raise UnsupportedModelError(f"{name} has no per-channel contributions, so eigen_smooth cannot apply")
    return [w.view(*w.shape, *([1] * (a.dim() - 2))).to(a.dtype) * a.unsqueeze(1) for w, a in zip(weights, acts)], weights


def peak_positive(proj: torch.Tensor) -> torch.Tensor:
    """``proj`` ``(N, ...)`` with each row's sign chosen so that its largest-magnitude entry is positive
    (``|max| >= |min|``; the first such entry on ties): Seg-Eigen-CAM's sign correction (Eq. 13) and
    scikit-learn's ``svd_flip`` rule for principal components."""
    flat = proj.flatten(1)
    peak = flat.gather(1, flat.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    sign = torch.where(peak < 0, -1.0, 1.0).to(proj.dtype)
    return proj * sign.view(-1, *([1] * (proj.dim() - 1)))
