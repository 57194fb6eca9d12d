"""Which task a model solves (classification, segmentation, detection) and, for ``layer="auto"`` on a
detector or segmenter, the layer an expert explains: the backbone's last feature map.

- torchvision detectors (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS): their trunk is an
  ``IntermediateLayerGetter`` at ``backbone.body``; the last layer it returns is the last feature
  map (ResNet ``layer4``, MobileNetV3 ``16``) -- the FPN and heads come after it.
- torchvision segmenters (FCN, DeepLabV3, LR-ASPP): the trunk is ``backbone`` and the layer it
  returns as ``"out"`` (``"high"`` for LR-ASPP) is the one the classifier reads.
- Other detectors (SSD, whose backbone returns six maps): the error lists the backbone's parts to
  choose from. Other segmenters (Hugging Face Segformer, DPT, UperNet...): the general
  ``layer="auto"`` rule, searching only inside the backbone (`search_scope`: the base model,
  e.g. ``segformer``), not the decoder.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import LayerNotFoundError

_SEGMENTERS = ("FCN", "DeepLabV3", "LRASPP", "_SimpleSegmentationModel")


def _class_names(model: nn.Module) -> list[str]:
    return [c.__name__ for c in type(model).__mro__]


def model_task(model: nn.Module) -> Optional[str]:
    """``"detection"`` (a model with a torchvision ``GeneralizedRCNNTransform`` inside),
    ``"segmentation"`` (torchvision FCN / DeepLabV3 / LR-ASPP, ``*ForSemanticSegmentation``) or None."""
    if any(any(n == "GeneralizedRCNNTransform" for n in _class_names(m)) for m in model.modules()):
        return "detection"
    names = _class_names(model)
    if any(n in _SEGMENTERS or n.endswith("ForSemanticSegmentation") for n in names):
        return "segmentation"
    return None


def _last_returned(trunk: nn.Module, task: str) -> Optional[str]:
    """The module name, inside an ``IntermediateLayerGetter``, of the feature map the task's head reads."""
    returned = getattr(trunk, "return_layers", None)  # {module name: output key}
    if not isinstance(returned, dict) or not returned:
        return None
    if task == "segmentation":
        for key in ("out", "high"):
            hits = [name for name, k in returned.items() if k == key]
            if hits:
                return hits[0]
    order = [name for name, _ in trunk.named_children() if name in returned]
    return order[-1] if order else None


def task_layer(model: nn.Module) -> Optional[str]:
    """The layer ``layer="auto"`` explains on a detector or segmenter; None for other models (the
    general rule applies). Raises `LayerNotFoundError` listing the choices when the model is a
    detector without a known trunk."""
    task = model_task(model)
    if task is None:
        return None
    backbone = getattr(model, "backbone", None)
    trunk = getattr(backbone, "body", backbone)
    if isinstance(trunk, nn.Module):
        inner = _last_returned(trunk, task)
        if inner is not None:
            prefix = "backbone.body" if trunk is not backbone else "backbone"
            return f"{prefix}.{inner}"
    if task == "segmentation":
        return None  # (B, classes, H, W) logits: the general rule can probe it
    if isinstance(backbone, nn.Module):
        choices = [f"backbone.{n}" for n, _ in backbone.named_children()] + ["backbone[KEY] (one of its outputs)"]
    else:
        choices = [n for n, _ in model.named_children()]
    raise LayerNotFoundError(
        f"layer='auto' cannot tell which feature map of this {task} model ({type(model).__name__}) to explain; "
        f"pass layer= one of its backbone's feature maps, e.g. {', '.join(repr(c) for c in choices[:8])}"
    )


def search_scope(model: nn.Module) -> Optional[str]:
    """Where ``layer="auto"`` looks on a segmenter the rules above do not cover: the backbone
    (``backbone``, else a Hugging Face model's base model, ``base_model_prefix``); None elsewhere."""
    if model_task(model) != "segmentation":
        return None
    names = dict(model.named_modules())
    for candidate in ("backbone", getattr(model, "base_model_prefix", None)):
        if isinstance(candidate, str) and candidate in names:
            return candidate
    return None
