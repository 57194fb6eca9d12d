"""What every model loaded by name from timm, Hugging Face or torchvision shares.

`adopt` turns the freshly built architecture into a `camkit.models.base.PixelModel`
*in place* (its class becomes ``Pixel<Class>``, a subclass of both), so layer names and state-dict
keys stay the library's own (``blocks.11.norm1`` on a timm ViT) and ``isinstance(model, Class)``
still holds. It attaches the normaliser, ``input_size``, ``categories``, ``task``,
``interpolation`` and ``crop_pct``, puts the model in eval mode and computes ``default_layer``.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType
from typing import Any, Optional, Sequence

import torch
from torch import nn

from camkit.errors import CamkitError, UnsupportedModelError
from camkit.models.base import PixelModel

TASKS = ("classification", "segmentation", "detection")
_PROBE_SEED = 0


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or say which ``pip install`` provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnsupportedModelError(
            f"{what} needs the {module!r} package, which is not installed: pip install 'camkit[{extra}]' "
            f"(or pip install {module})"
        ) from exc


def _rebuild(base: type[nn.Module]) -> PixelModel:
    cls = pixel_class(base)
    return cls.__new__(cls)


def _reduce_ex(self: PixelModel, protocol: Any) -> Any:
    # pickle / deepcopy: name the importable base class, not the class made at run time
    rv = object.__reduce_ex__(self, protocol)
    return (_rebuild, (type(self)._pixel_base,)) + tuple(rv[2:])  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def pixel_class(base: type[nn.Module]) -> type[PixelModel]:
    """``Pixel<base>``: `PixelModel` mixed into ``base`` (one class per base, made once)."""
    if issubclass(base, PixelModel):
        return base
    return type(f"Pixel{base.__name__}", (PixelModel, base), {
        "__module__": __name__, "__doc__": f"{base.__module__}.{base.__qualname__} taking pixels in [0, 1].",
        "_pixel_base": base, "__reduce_ex__": _reduce_ex,
    })


def adopt(
    net: nn.Module,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, ...],
    categories: Optional[list[str]],
    task: str,
    interpolation: str = "bilinear",
    crop_pct: Optional[float] = None,
    probe_size: Optional[tuple[int, ...]] = None,
) -> PixelModel:
    """Make ``net`` (built by camkit just now, weights loaded) a pixel model in eval mode.

    ``forward(x) = net.forward((x - mean) / std)`` for RGB ``x`` in [0, 1]. ``categories`` longer or
    shorter than the model's classes are the caller's to check. ``probe_size``: the input size at which
    the default layer is chosen (default ``input_size``; a video model's smallest clip is cheaper).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    net.__class__ = pixel_class(type(net))
    assert isinstance(net, PixelModel)
    net.set_pixel_interface(mean=mean, std=std, input_size=input_size, default_layer="", categories=categories)
    net.task = task
    net.interpolation = interpolation
    net.crop_pct = crop_pct
    net.eval()
    net.default_layer = _default_layer(net, probe_size or net.input_size)  # type: ignore[assignment]
    return net


def _default_layer(model: PixelModel, size: tuple[int, ...]) -> Optional[str]:
    """The layer CAM methods explain when given ``layer="auto"``, computed once at load time:
    `camkit.layers.task_layer` for detectors and segmenters with a known trunk, else
    `camkit.layers.auto_layer` on one random image (clip) of ``size``. None, with a
    warning, when no layer can be chosen here; ``layer="auto"`` then chooses on the user's images.
    """
    from camkit.layers import auto_layer, task_layer

    g = torch.Generator().manual_seed(_PROBE_SEED)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.rand(1, 3, *size, generator=g).to(device)
    try:
        return task_layer(model) or auto_layer(model, x)
    except CamkitError as exc:
        warnings.warn(f"{type(model).__name__}: no default layer chosen at load time ({exc}); layer='auto' "
                      "will try again on your images", stacklevel=5)
        return None


