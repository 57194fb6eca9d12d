"""Model zoo: ``list_models()``, ``load(name, weights)``, ``wrap(module, preprocess, ...)``.

Every model takes RGB pixels in [0, 1], ``(B, 3, H, W)``, and has ``input_size``, ``default_layer``
and ``categories``; see :mod:`camkit.models.base` (interface) and :mod:`camkit.models.zoo` (weights).
"""
from __future__ import annotations

from camkit.models.base import PixelModel, WrappedModel, wrap
from camkit.models.zoo import ModelEntry, list_models, load, register

__all__ = ["PixelModel", "WrappedModel", "wrap", "list_models", "load", "register", "ModelEntry"]
