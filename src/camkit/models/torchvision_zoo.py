"""torchvision ResNet-50, VGG-16 and ViT-B/16 as pixel models (ImageNet normalisation inside).

The instances keep torchvision's module names (``layer4``, ``features.29``, ``encoder.layers...``)
and state-dict keys. ``weights="imagenet"`` reads torchvision's own file from the torch hub cache
(``torch.hub.get_dir()/checkpoints``) and never downloads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from camkit.models.base import IMAGENET_MEAN, IMAGENET_STD, PixelModel, as_pixel_model


class PixelResNet(PixelModel, tvm.ResNet):
    """torchvision ResNet taking pixels in [0, 1]."""


class PixelVGG(PixelModel, tvm.VGG):
    """torchvision VGG taking pixels in [0, 1]."""


class PixelViT(PixelModel, tvm.VisionTransformer):
    """torchvision VisionTransformer taking pixels in [0, 1]."""


#: name -> (builder, pixel class, weights enum, default layer)
TORCHVISION_MODELS: dict[str, tuple[Callable[..., nn.Module], type[PixelModel], type, str]] = {
    "resnet50": (tvm.resnet50, PixelResNet, tvm.ResNet50_Weights, "layer4"),
    "vgg16": (tvm.vgg16, PixelVGG, tvm.VGG16_Weights, "features.29"),
    "vit_b_16": (tvm.vit_b_16, PixelViT, tvm.ViT_B_16_Weights, "encoder.layers.encoder_layer_11.ln_1"),
}


def hub_checkpoint_dir() -> Path:
    """Where torchvision caches downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_imagenet_file(name: str) -> Path:
    """The cached torchvision ImageNet-1k weights file for ``name``, or a clear error if absent.

    Any ``IMAGENET1K_*`` weights of the model at 224x224 are accepted, the default ones first.
    """
    _, _, weights_enum, _ = TORCHVISION_MODELS[name]
    candidates = [weights_enum.DEFAULT] + [
        w for w in weights_enum if w.name.startswith("IMAGENET1K") and w is not weights_enum.DEFAULT
    ]
    candidates = [w for w in candidates if w.meta.get("min_size", (224, 224)) <= (224, 224)]
    folder = hub_checkpoint_dir()
    for w in candidates:
        path = folder / os.path.basename(w.url)
        if path.is_file():
            return path
    expected = ", ".join(os.path.basename(w.url) for w in candidates)
    raise FileNotFoundError(
        f"no cached ImageNet weights for {name}: camkit never downloads. Put one of [{expected}] "
        f"(from {candidates[0].url}) in {folder} (set TORCH_HOME to move it), "
        f"or pass weights='path/to/{name}.pth'"
    )


def build_torchvision(name: str, categories: list[str] | None) -> PixelModel:
    """Randomly initialised torchvision ``name`` (224x224, 1000 classes) as a pixel model."""
    builder, pixel_class, _, layer = TORCHVISION_MODELS[name]
    net = builder(weights=None)
    return as_pixel_model(
        net, pixel_class, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(224, 224),
        default_layer=layer, categories=categories,
    )
