"""``torchvision:NAME``: any classification, segmentation, detection or video classification builder
of ``torchvision.models.get_model``, weights from a local file only (never downloaded).

Video classifiers (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``, ``mvit_v1_b``, ``mvit_v2_s``,
``swin3d_t``) take clips ``(B, 3, T, H, W)`` of RGB pixels in [0, 1]; their ``input_size`` is
``(T, H, W)`` (16 frames, or the weights' ``min_temporal_size`` if more, at the weights' crop size) and
``grid_dims`` 3; the weights' Kinetics-400 names are their categories.

Categories come from the weights enum's metadata (shipped with torchvision, offline): ImageNet,
Pascal VOC or COCO names. Classifiers and segmenters get their weights' normalisation (ImageNet
mean/std) inside; detectors normalise and resize inside (``GeneralizedRCNNTransform`` and the like),
so they take the [0, 1] pixels as they are.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Optional

from torch import nn
from torchvision import models as tvm

from camkit.errors import UnsupportedModelError
from camkit.models.base import IMAGENET_MEAN, IMAGENET_STD, PixelModel
from camkit.models.loaded import adopt
from camkit.models.state import Weights, load_file_weights

#: torchvision.models sub-package -> camkit task (classifiers live at the top level and in quantization)
_TASKS = {"segmentation": "segmentation", "detection": "detection", "quantization": "classification",
          "video": "classification"}
_REFUSED = {"optical_flow": "predicts optical flow from image pairs"}
FRAMES = 16  # clip length of torchvision's video weights (Kinetics-400, 16 frames)


def _task(name: str, builder: Any) -> str:
    parts = builder.__module__.split(".")  # torchvision.models[.sub].module
    sub = parts[2] if len(parts) > 3 else ""
    if sub in _REFUSED:
        raise UnsupportedModelError(f"torchvision:{name} {_REFUSED[sub]}; camkit explains image classifiers, "
                                    "segmenters and detectors")
    return _TASKS.get(sub, "classification")


def _builder(name: str) -> Any:
    names = tvm.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnsupportedModelError(f"torchvision has no model {name!r}.{hint} (torchvision.models.list_models() "
                                    f"lists all {len(names)})")
    return tvm.get_model_builder(name)


def _build(name: str, builder: Any, kwargs: dict[str, Any]) -> nn.Module:
    if kwargs.get("weights") is not None:
        raise UnsupportedModelError("torchvision:NAME takes its weights as a file (load(name, weights=PATH)), "
                                    "not a weights enum: camkit never downloads")
    kwargs.pop("weights", None)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs.setdefault("weights_backbone", None)  # the builders' default downloads ImageNet weights
    try:
        return builder(weights=None, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"torchvision could not build {name!r} with {kwargs}: {exc}") from exc


def _classes(net: nn.Module, task: str) -> Optional[int]:
    """The number of classes the built model predicts, where it can be read."""
    if task == "detection":
        predictor = getattr(getattr(net, "roi_heads", None), "box_predictor", None)
        if predictor is not None:
            return int(predictor.cls_score.out_features)
        head = getattr(getattr(net, "head", None), "classification_head", None)  # RetinaNet, FCOS, SSD
        n = getattr(head, "num_classes", None) or getattr(head, "num_columns", None)
        return int(n) if n is not None else None
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return int(last[-1].out_features if isinstance(last[-1], nn.Linear) else last[-1].out_channels) if last else None


def load_torchvision(name: str, weights: Weights = "default", **kwargs: Any) -> PixelModel:
    """torchvision ``name`` (random init, then ``weights`` from a state-dict file) taking RGB pixels in [0, 1].

    ``kwargs`` go to the builder (``num_classes``, ``box_score_thresh``, ...); ``weights_backbone``
    defaults to None. ``weights="default"`` or None: random initialisation (``"default"`` warns).
    """
    builder = _builder(name)
    task = _task(name, builder)
    net = _build(name, builder, dict(kwargs))
    load_file_weights(net, weights, f"torchvision:{name}")
    meta_weights = tvm.get_model_weights(name).DEFAULT
    categories = list(meta_weights.meta.get("categories") or []) or None
    n = _classes(net, task)
    if categories is not None and n is not None and len(categories) != n:
        categories = None  # num_classes changed: the names of the pretrained weights do not apply
    if task == "detection":
        transform = net.transform  # type: ignore[union-attr]
        side = int(transform.min_size[0])
        return adopt(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(side, side),
                     categories=categories, task=task)
    preset = meta_weights.transforms()
    crop = getattr(preset, "crop_size", None) or preset.resize_size
    resize = preset.resize_size
    if builder.__module__.split(".")[2] == "video":
        least = int(meta_weights.meta.get("min_temporal_size") or 1)
        side = int(max(meta_weights.meta.get("min_size") or (1, 1)))
        small = (max(4, least), max(64, side), max(64, side))  # the cheapest clip that shows every stage
        model = adopt(net, mean=preset.mean, std=preset.std, input_size=(max(FRAMES, least), int(crop[0]), int(crop[1])),
                      categories=categories, task=task, interpolation=preset.interpolation.value, probe_size=small)
        model.grid_dims = 3
        return model
    return adopt(net, mean=getattr(preset, "mean", IMAGENET_MEAN), std=getattr(preset, "std", IMAGENET_STD),
                 input_size=(int(crop[0]), int(crop[0])), categories=categories, task=task,
                 interpolation=preset.interpolation.value,
                 crop_pct=float(crop[0]) / float(resize[0]) if task == "classification" else None)
