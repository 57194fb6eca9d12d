"""Model zoo: ``list_models()``, ``load(name, weights)``, ``wrap(module, preprocess, ...)``.

Every model takes RGB pixels in [0, 1], ``(B, 3, H, W)``, and has ``input_size``, ``default_layer``
and ``categories``. ``load("timm:NAME")``, ``load("hf:DIR")``, ``load("torchvision:NAME")`` (also video
classifiers, clips ``(B, 3, T, H, W)``) and ``load("monai:NAME", spatial_dims=3, ...)`` (3-D medical
networks, volumes ``(B, C, D, H, W)``) load other libraries' models. Models never import methods; layer choice comes from
`camkit.layers`.

Modules: `.base` (the pixel-model interface, ``wrap``), `.zoo` (the registry and its
weights), `.state` (reading weight files safely and strictly), `.loaded` (what models
loaded by name share), `.timm_loader`, `.hf_loader`, `.torchvision_loader`, `.monai_loader`
(one loader per library), `.torchvision_zoo` (ResNet-50, VGG-16, ViT-B/16 as pixel models),
`.efficientnet_lite` (the architecture of the bundled real ImageNet weights),
`.digits_nets` (the small digits classifiers), `.train_digits` (how their bundled
weights were trained), `.digits3d_nets` (small 3-D nets for the generated clips and volumes;
trained by ``tools/train_digits3d.py``).
"""
from __future__ import annotations

from camkit.models.base import PixelModel, WrappedModel, wrap
from camkit.models.zoo import PREFIXES, ModelEntry, list_models, load, register


def __getattr__(name: str):  # HFVideo without importing transformers-facing code up front
    if name == "HFVideo":
        from camkit.models.hf_loader import HFVideo

        return HFVideo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PixelModel", "WrappedModel", "wrap", "list_models", "load", "register", "ModelEntry", "PREFIXES", "HFVideo"]
