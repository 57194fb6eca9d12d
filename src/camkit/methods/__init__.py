"""CAM methods: one base class, one small class per method family, a name registry.

Modules: `.base` (`BaseCAM`: input checks, layers, targets, the model left as found,
post-processing; each method declares ``output``, ``cost`` and ``expensive``),
`.explanation` (what a method returns and computes from), `.registry` (name -> class,
``create``, ``list_methods``), `.smoothing` (``aug_smooth`` and ``eigen_smooth``, options of
every CAM), `.gradient` (CAM, Grad-CAM, Grad-CAM++, Smooth Grad-CAM++, XGrad-CAM, Layer-CAM,
HiResCAM, Grad-CAM element-wise), `.shapley` (ShapleyCAM: gradient and Hessian-vector product),
`.eigen` (EigenCAM), `.eigengrad` (EigenGrad-CAM, Seg-Eigen-CAM), `.kpca` (KPCA-CAM:
kernel PCA), `.fem` (FEM: k-sigma channel weights), `.randomcam` (RandomCAM: a random
baseline), `.dff` (Deep Feature Factorization: NMF concepts), `.fullgrad`
(FullGrad), `.scorecam` (Score-CAM, SS-CAM, IS-CAM: one loop of masked forwards),
`.ablation` (Ablation-CAM and its tail replay), `.guided` (Guided Backprop, Guided
Grad-CAM: pixel-space attributions), `.meta` (meta-methods around a ``base`` method:
FinerCAM, RefineCAM; ``"meta:base"`` names), `.sess` (SESS: windows at several scales, fused),
`.legrad` (LeGrad: gradients with respect to a vision transformer's attention),
`.perturbation` (deprecated path of Ablation-CAM and Score-CAM, removed in 0.3.0).
"""
from .base import BaseCAM
from .explanation import Explanation
from .gradient import (
    CAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, SmoothGradCAMPlusPlus, XGradCAM,
)
from .shapley import ShapleyCAM
from .registry import create, get, list_methods, register
from .ablation import AblationCAM
from .scorecam import ISCAM, SSCAM, ScoreCAM
from .eigen import EigenCAM
from .eigengrad import EigenGradCAM, SegEigenCAM
from .kpca import KPCACAM
from .fem import FEM
from .randomcam import RandomCAM
from .dff import DFF
from .fullgrad import FullGrad
from .smoothing import Augment
from .guided import GuidedBackprop, GuidedGradCAM, to_image
from .meta import FinerCAM, MetaCAM, RefineCAM
from .sess import SESS
from .legrad import LeGrad

__all__ = [
    "BaseCAM", "Explanation", "CAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "XGradCAM",
    "LayerCAM", "HiResCAM", "create", "get", "list_methods", "register",
    "AblationCAM", "ScoreCAM", "EigenCAM", "GuidedBackprop", "GuidedGradCAM", "to_image",
    "EigenGradCAM", "FullGrad", "Augment",
    "GradCAMElementWise", "ShapleyCAM", "KPCACAM", "FEM", "SegEigenCAM", "RandomCAM", "DFF",
    "SSCAM", "ISCAM", "MetaCAM", "FinerCAM", "RefineCAM", "SESS", "LeGrad",
]
