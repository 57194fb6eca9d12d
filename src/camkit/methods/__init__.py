"""CAM methods: one base class, one small class per method, a name registry."""
from .base import BaseCAM, Explanation
from .gradient import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, SmoothGradCAMPlusPlus, XGradCAM
from .registry import create, get, list_methods, register

__all__ = [
    "BaseCAM", "Explanation", "CAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "XGradCAM",
    "LayerCAM", "HiResCAM", "create", "get", "list_methods", "register",
]
