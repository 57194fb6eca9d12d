"""What a method returns (`Explanation`) and what it computes from (`Context`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..core import engine
from ..core.region import InputRegion
from ..targets import Targets

Reshape = Callable[[torch.Tensor], torch.Tensor]
#: what `BaseCAM.compute` returns: per layer, raw maps ``(B, K, h, w)`` and weights ``(B, K, C)`` or None
Maps = tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]


@dataclass
class Explanation:
    """What a method returns.

    ``maps``: ``(B, H, W)`` (``(B, K, H, W)`` for TopK/BottomK) float32 in [0, 1] at the input size; for a
    clip or volume ``(B, C, T, H, W)``: ``(B, T, H, W)`` (``(B, K, T, H, W)``), normalised per clip.
    ``raw``: the low-resolution map after ReLU, before upsampling and normalisation (a list when
    several layers are fused). ``weights``: per-channel weights ``(B, [K,] C)`` where the method has
    them. ``scores``: the explained model outputs ``(B, [K])``. ``targets``: class indices
    ``(B, [K])`` (None for a callable target). ``logits``: the full model output ``(B, N)``.
    ``layers``: the explained layers' names; ``layout``: how each layer's output was read as a grid,
    e.g. ``"nchw 7×7"``, ``"nhwc 7×7"``, ``"tokens: 5 prefix, 16×16"``, ``"ncthw 2×7×7"``. ``categories``: the model's
    class names where it has them (``model.categories``: zoo and loaded models), so that pictures
    (``viz.show``) name the classes without being told.
    ``output`` ``"concepts"`` (DFF): ``maps`` are ``(B, k, H, W)``, one per concept found in the
    activations, ``targets`` ``(B, k)`` each concept's label and ``concept_scores`` ``(B, k, N)`` the
    head's class scores of each concept (None without a head); see `camkit.methods.DFF`.
    """

    maps: torch.Tensor
    raw: Union[torch.Tensor, list[torch.Tensor]]
    weights: Union[torch.Tensor, list[torch.Tensor], None]
    scores: torch.Tensor
    targets: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]
    layers: list[str]
    layout: list[str] = field(default_factory=list)
    target: Any = None  # the resolved RowTarget (Segmentation/Detection: the classes, masks, boxes explained)
    output: str = "cam"  # the method's ``output``: "cam" maps in [0, 1], "attribution" (signed, (B, [K,] C, H, W)) or "concepts"
    concept_scores: Optional[torch.Tensor] = None  # output "concepts": the head's class scores of each concept (B, k, N)
    categories: Optional[list[str]] = field(default=None, repr=False)  # the model's class names, if it has them


@dataclass
class Context:
    """Everything a method needs to compute its maps for one call."""

    model: nn.Module
    x: torch.Tensor
    pass_: engine.Pass
    targets: Targets
    scores: torch.Tensor  # (B, K)
    acts: list[torch.Tensor]  # per layer, (B, C, h, w)
    modules: list[nn.Module]  # the target layers
    to_grid: list[Reshape]  # per layer, raw layer output -> (B, C, h, w)
    region: Optional[InputRegion] = None  # the input's part of the layer grids (models that pad inside); None: all
