"""CAM methods: one base class, one small class per method, a name registry."""
from .base import BaseCAM, Explanation
from .gradient import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, SmoothGradCAMPlusPlus, XGradCAM
from .registry import create, get, list_methods, register
from .perturbation import AblationCAM, ScoreCAM
from .eigen import EigenCAM
from .eigengrad import EigenGradCAM
from .fullgrad import FullGrad
from .smoothing import Augment
from .guided import GuidedBackprop, GuidedGradCAM, to_image

__all__ = [
    "BaseCAM", "Explanation", "CAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "XGradCAM",
    "LayerCAM", "HiResCAM", "create", "get", "list_methods", "register",
    "AblationCAM", "ScoreCAM", "EigenCAM", "GuidedBackprop", "GuidedGradCAM", "to_image",
    "EigenGradCAM", "FullGrad", "Augment",
]
