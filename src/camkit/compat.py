"""The peers' call signatures over camkit, for the common cases: code written for pytorch-grad-cam or
torchcam runs by changing its imports, and gives the same maps.

pytorch-grad-cam (``from camkit.compat import GradCAM, ClassifierOutputTarget, show_cam_on_image``):

    with GradCAM(model=model, target_layers=[model.layer4], reshape_transform=None) as cam:
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])   # numpy (B, H, W)
    picture = show_cam_on_image(rgb_float_hwc, grayscale[0], use_rgb=True)      # uint8 (H, W, 3)

Each map is pytorch-grad-cam's: per layer, the method's map after ReLU at the layer's resolution,
min-max scaled (``(m - min) / (max + 1e-7)``) and resized bilinearly to the input; several layers are
averaged and scaled again. ``targets``: None (top-1), a list of
``ClassifierOutputTarget`` (one per image), or any callables taking one image's output row.

torchcam (``from camkit.compat import torchcam``, then ``torchcam.GradCAM``, ``GradCAMpp``,
``SmoothGradCAMpp``, ``XGradCAM``, ``LayerCAM``, ``ScoreCAM``; also importable as ``TCGradCAM``,
``GradCAMpp``, ``SmoothGradCAMpp``, ``TCXGradCAM``, ``TCLayerCAM``, ``TCScoreCAM``):

    with torchcam.SmoothGradCAMpp(model, target_layer="layer4") as cam_extractor:
        out = model(x)
        cams = cam_extractor(out.argmax(1).tolist(), out)   # list, one (B, h, w) tensor per layer

Each map is torchcam's: the method's map after ReLU at the layer's resolution, min-max scaled
(``(m - min) / (max + 1e-8)``). The extractor records the input of your forward (a forward pre-hook
on the model, removed on exit or by ``remove_hooks()``) and explains it with camkit when called,
so the model runs again inside the call; ``scores`` is accepted and not needed.

Not covered (use camkit's own spelling, see the migration page): pytorch-grad-cam's
``aug_smooth`` (different augmentations), its metrics and ``GuidedBackpropReLUModel``; torchcam's
``fuse_cams`` and ``targets=``. Both peers' sign of EigenCAM's principal component is arbitrary;
camkit's agrees with the data (so EigenCAM maps may be flipped relative to theirs).
"""
from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .methods import create

__all__ = [
    "ClassifierOutputTarget", "show_cam_on_image",
    "GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM", "GradCAMElementWise", "EigenCAM",
    "EigenGradCAM", "ScoreCAM", "AblationCAM",
    "TCGradCAM", "GradCAMpp", "SmoothGradCAMpp", "TCXGradCAM", "TCLayerCAM", "TCScoreCAM", "torchcam",
]


class ClassifierOutputTarget:
    """pytorch-grad-cam's target: the score of class ``category`` in one image's output row
    (``output[category]``; ``output[:, category]`` for a batch)."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[..., self.category]


def _minmax(maps: torch.Tensor, eps: float) -> torch.Tensor:
    """``(m - min) / (max(m - min) + eps)`` over the last two dims, as the peers scale a map."""
    flat = maps.flatten(-2)
    shifted = maps - flat.amin(-1)[..., None, None]
    return shifted / (shifted.flatten(-2).amax(-1)[..., None, None] + eps)


def _layers(raw: Union[torch.Tensor, list[torch.Tensor]]) -> list[torch.Tensor]:
    return list(raw) if isinstance(raw, (list, tuple)) else [raw]


class _PgcCAM:
    """A pytorch-grad-cam method: ``Method(model, target_layers, reshape_transform=None)``, called as
    ``cam(input_tensor, targets=None, aug_smooth=False, eigen_smooth=False)`` -> numpy ``(B, H, W)``."""

    method = "gradcam"

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module],
                 reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **kwargs: Any) -> None:
        if isinstance(target_layers, nn.Module) or not len(target_layers):
            raise InputError("target_layers must be a non-empty list of modules, e.g. [model.layer4] "
                             "(pytorch-grad-cam's spelling; camkit's own: layer=model.layer4 or layer='auto')")
        self.model, self.target_layers = model, list(target_layers)
        self.reshape_transform, self.kwargs = reshape_transform, kwargs
        self.outputs: Optional[torch.Tensor] = None

    def __call__(self, input_tensor: torch.Tensor, targets: Optional[Sequence[Callable[[torch.Tensor], Any]]] = None,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> np.ndarray:
        """Maps ``(B, H, W)`` float32 in [0, 1], one per image, of its target (None: its top-1 class)."""
        cam = create(self.method, self.model, layer=self.target_layers, reshape=self.reshape_transform,
                     aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, **self.kwargs)
        e = cam.explain(input_tensor, targets=_pgc_targets(targets, len(input_tensor)))
        self.outputs = e.logits
        size = tuple(input_tensor.shape[-2:])
        if aug_smooth:  # camkit's augmentations are not pytorch-grad-cam's: its fused map as it is
            return e.maps.numpy().astype(np.float32)
        per_layer = [F.interpolate(_minmax(r.float(), 1e-7)[:, None], size=size, mode="bilinear",
                                   align_corners=False)[:, 0] for r in _layers(e.raw)]
        fused = _minmax(torch.stack(per_layer).mean(0), 1e-7)
        return fused.cpu().numpy().astype(np.float32)

    def __enter__(self) -> "_PgcCAM":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _pgc_targets(targets: Optional[Sequence[Any]], batch: int) -> Any:
    if targets is None:
        return None
    targets = list(targets)
    if len(targets) != batch:
        raise InputError(f"targets must hold one target per image ({batch}), got {len(targets)}")
    if all(isinstance(t, ClassifierOutputTarget) for t in targets):
        return [t.category for t in targets]
    return targets  # camkit takes a list of per-image callables as pytorch-grad-cam does


def _pgc(name: str, method: str) -> type:
    doc = (f"pytorch-grad-cam's `{name}(model, target_layers, reshape_transform=None)` over camkit's "
           f"`{method}`; called as `cam(input_tensor, targets=[ClassifierOutputTarget(c), ...])` -> numpy "
           "`(B, H, W)` in [0, 1], pytorch-grad-cam's scaling (see the module).")
    return type(name, (_PgcCAM,), {"method": method, "__doc__": doc, "__module__": __name__})


GradCAM = _pgc("GradCAM", "gradcam")
GradCAMPlusPlus = _pgc("GradCAMPlusPlus", "gradcam++")
XGradCAM = _pgc("XGradCAM", "xgradcam")
LayerCAM = _pgc("LayerCAM", "layercam")
HiResCAM = _pgc("HiResCAM", "hirescam")
GradCAMElementWise = _pgc("GradCAMElementWise", "gradcam-elementwise")
EigenCAM = _pgc("EigenCAM", "eigencam")
EigenGradCAM = _pgc("EigenGradCAM", "eigengradcam")
ScoreCAM = _pgc("ScoreCAM", "scorecam")
AblationCAM = _pgc("AblationCAM", "ablationcam")


def show_cam_on_image(img: np.ndarray, mask: np.ndarray, use_rgb: bool = False, colormap: Any = None,
                      image_weight: float = 0.5) -> np.ndarray:
    """pytorch-grad-cam's overlay: ``img`` float ``(H, W, 3)`` in [0, 1], ``mask`` ``(H, W)`` in [0, 1];
    returns uint8 ``255 * c / max(c)`` with ``c = (1 - image_weight) * jet(mask) + image_weight * img``.
    ``use_rgb=False`` returns BGR channels, as pytorch-grad-cam (OpenCV's order) does; ``colormap``: a
    matplotlib colormap name (default ``"jet"``, matplotlib's version of OpenCV's ``COLORMAP_JET``)."""
    from matplotlib import colormaps

    img = np.asarray(img, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if img.max() > 1 or img.min() < 0:
        raise InputError("img must be float in [0, 1] (divide a uint8 image by 255)")
    if not 0 <= image_weight <= 1:
        raise InputError(f"image_weight must be in [0, 1], got {image_weight}")
    if img.ndim != 3 or img.shape[2] != 3 or mask.shape != img.shape[:2]:
        raise InputError(f"img must be (H, W, 3) and mask (H, W) of the same size, got {img.shape} and {mask.shape}")
    lut = colormaps[colormap if isinstance(colormap, str) else "jet"].resampled(256)
    heat = lut(np.uint8(255 * np.clip(mask, 0, 1)))[..., :3].astype(np.float32)
    heat = np.float32(np.round(heat * 255)) / 255  # 8-bit colours, as OpenCV's lookup table gives
    if not use_rgb:
        heat = heat[..., ::-1]
    cam = (1 - image_weight) * heat + image_weight * img
    return np.uint8(255 * cam / np.max(cam))


class _TorchcamExtractor:
    """torchcam's extractor: ``Method(model, target_layer=None, **options)``; after your forward,
    ``extractor(class_idx, scores=None, normalized=True)`` -> list of ``(B, h, w)`` maps, one per layer."""

    method = "gradcam"
    options: dict[str, str] = {}  # torchcam's option name -> camkit's

    def __init__(self, model: nn.Module, target_layer: Union[str, nn.Module, Sequence[Union[str, nn.Module]], None] = None,
                 input_shape: Any = None, reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.options)
        if unknown:
            raise InputError(f"{type(self).__name__} does not take {sorted(unknown)}; it takes {sorted(self.options)}")
        self.model = model
        if target_layer is None:
            layer: Any = "auto"
        elif isinstance(target_layer, (str, nn.Module)):
            layer = target_layer
        else:
            layer = list(target_layer)
        self._cam = create(self.method, model, layer=layer, reshape=reshape_transform,
                           **{self.options[k]: v for k, v in kwargs.items()})
        self._input: Optional[torch.Tensor] = None
        self._busy = False
        self._handle: Optional[Any] = model.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._busy and args and isinstance(args[0], torch.Tensor):
            self._input = args[0].detach()

    def __call__(self, class_idx: Union[int, Sequence[int]], scores: Any = None, normalized: bool = True) -> list[torch.Tensor]:
        """The maps of ``class_idx`` (one int for the batch, or one per image) for the input of the
        model's last forward: per layer ``(B, h, w)``, after ReLU, scaled as torchcam does."""
        if self._input is None:
            raise InputError("run the model on your input first (out = model(x)), then call the extractor "
                             "with the class indices: cams = extractor(class_idx, out)")
        x = self._input
        targets = [int(class_idx)] * len(x) if isinstance(class_idx, int) else [int(c) for c in class_idx]
        self._busy = True
        try:
            e = self._cam.explain(x, targets=targets)
        finally:
            self._busy = False
        raw = [r.float() for r in _layers(e.raw)]
        return [_minmax(r, 1e-8) for r in raw] if normalized else raw

    def remove_hooks(self) -> None:
        """Remove the forward pre-hook the extractor put on the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "_TorchcamExtractor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove_hooks()


def _torchcam(name: str, method: str, options: Optional[dict[str, str]] = None) -> type:
    doc = (f"torchcam's `{name}(model, target_layer=...)` extractor over camkit's `{method}`: run the model, "
           "then `extractor(class_idx, out)` -> list of `(B, h, w)` maps, torchcam's scaling (see the module).")
    return type(name, (_TorchcamExtractor,), {"method": method, "options": options or {}, "__doc__": doc,
                                               "__module__": __name__})


TCGradCAM = _torchcam("GradCAM", "gradcam")
GradCAMpp = _torchcam("GradCAMpp", "gradcam++")
TCXGradCAM = _torchcam("XGradCAM", "xgradcam")
TCLayerCAM = _torchcam("LayerCAM", "layercam")
TCScoreCAM = _torchcam("ScoreCAM", "scorecam", {"batch_size": "batch_size"})


class SmoothGradCAMpp(_TorchcamExtractor):
    """torchcam's `SmoothGradCAMpp(model, target_layer, num_samples=4, std=0.3)` over camkit's
    `smoothgradcam++`: Grad-CAM++ with its gradient powers averaged over ``num_samples`` copies of the
    input plus Gaussian noise of standard deviation ``std`` (in the input's units: camkit's ``noise`` is
    ``std / (max x - min x)`` of the batch). camkit draws the noise (seeded), so the maps are torchcam's
    in expectation, not to the bit."""

    method = "smoothgradcam++"

    def __init__(self, model: nn.Module, target_layer: Any = None, num_samples: int = 4, std: float = 0.3,
                 input_shape: Any = None, reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        super().__init__(model, target_layer, input_shape, reshape_transform)
        if num_samples < 1 or std < 0:
            raise InputError(f"num_samples must be >= 1 and std >= 0, got {num_samples} and {std}")
        self._cam.n, self.std = int(num_samples), float(std)

    def __call__(self, class_idx: Union[int, Sequence[int]], scores: Any = None, normalized: bool = True) -> list[torch.Tensor]:
        if self._input is not None:
            spread = float(self._input.max() - self._input.min())
            self._cam.noise = self.std / spread if spread > 0 else 0.0
        return super().__call__(class_idx, scores, normalized)


#: torchcam's names (``torchcam.methods``), for ``from camkit.compat import torchcam; torchcam.GradCAM(...)``
torchcam = SimpleNamespace(GradCAM=TCGradCAM, GradCAMpp=GradCAMpp, SmoothGradCAMpp=SmoothGradCAMpp,
                           XGradCAM=TCXGradCAM, LayerCAM=TCLayerCAM, ScoreCAM=TCScoreCAM)
