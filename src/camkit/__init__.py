"""camkit: Class Activation Maps for PyTorch vision models, and metrics that say which to trust.

>>> import camkit
>>> with camkit.GradCAM(model, layer="auto") as cam:
...     maps = cam(images)                       # (B, H, W) in [0, 1]
...     maps5 = cam(images, targets=camkit.TopK(5))  # (B, 5, H, W), one forward
"""
from __future__ import annotations

import importlib
from typing import Any

from .targets import BottomK, TopK
from .errors import (
    CamkitError, InputError, LayerNotFoundError, NoGradientError, TargetError, UnsupportedModelError, ZeroGradientWarning,
)
from .methods import (
    CAM, BaseCAM, Explanation, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, SmoothGradCAMPlusPlus,
    XGradCAM, create, list_methods,
    AblationCAM, ScoreCAM, EigenCAM, GuidedBackprop, GuidedGradCAM, to_image,
    Augment, EigenGradCAM, FullGrad,
    GradCAMElementWise, ShapleyCAM, KPCACAM, FEM, SegEigenCAM, RandomCAM, DFF,
    ISCAM, SSCAM, FinerCAM, RefineCAM, SESS, LeGrad,
)

__version__ = "0.2.0"

_LAZY = {"models", "data", "metrics", "bench", "viz", "targets", "compat"}


def __getattr__(name: str) -> Any:  # heavy submodules load on first use
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")


__all__ = [
    "CAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM",
    "BaseCAM", "Explanation", "TopK", "BottomK", "create", "list_methods",
    "AblationCAM", "ScoreCAM", "EigenCAM", "GuidedBackprop", "GuidedGradCAM", "to_image",
    "Augment", "EigenGradCAM", "FullGrad",
    "GradCAMElementWise", "ShapleyCAM", "KPCACAM", "FEM", "SegEigenCAM", "RandomCAM", "DFF",
    "SSCAM", "ISCAM", "FinerCAM", "RefineCAM", "SESS", "LeGrad",
    "CamkitError", "InputError", "LayerNotFoundError", "NoGradientError", "TargetError", "UnsupportedModelError",
    "ZeroGradientWarning",
]
