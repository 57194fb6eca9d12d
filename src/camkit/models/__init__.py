"""Model zoo: ``list_models()``, ``load(name, weights)``, ``wrap(module, preprocess, ...)``.

Every model takes RGB pixels in [0, 1], ``(B, 3, H, W)``, and has ``input_size``, ``default_layer``
and ``categories``; see :mod:`camkit.models.base` (interface) and :mod:`camkit.models.zoo` (weights).
``load("timm:NAME")``, ``load("hf:DIR")`` and ``load("torchvision:NAME")`` load other libraries'
models the same way (:mod:`camkit.models.loaded`).
"""
from __future__ import annotations

from camkit.models.base import PixelModel, WrappedModel, wrap
from camkit.models.zoo import PREFIXES, ModelEntry, list_models, load, register

__all__ = ["PixelModel", "WrappedModel", "wrap", "list_models", "load", "register", "ModelEntry", "PREFIXES"]
