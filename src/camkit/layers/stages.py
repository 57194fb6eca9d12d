"""The stages before a layer: the last feature map at each finer grid, for methods that combine the
maps of several resolutions (RefineCAM).

From the traced probe (`.probe`): among the modules with the same parent as the anchor layer
that run (once) before it, the output of the last one at each grid finer than the anchor's -- for
ResNet's ``layer4`` that is ``layer3``, ``layer2``, ...; for VGG-16's ``features.29`` the last ReLU
before each max-pool.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.keys import split_key
from ..errors import LayerNotFoundError
from .layout import readings
from .names import find_layer
from .probe import Probe, probe
from .trace import ModuleCall


def _cells(p: Probe, call: ModuleCall) -> int:
    """Cells of the grid ``call``'s output is read as (0: not a feature map of the input)."""
    if call.shape is None or call.internal:
        return 0
    rs = readings(torch.empty(call.shape, device="meta"), 1, p.input_hw, p.patch)
    return math.prod(rs[0].grid) if rs and not p.hidden(call, rs[0]) else 0


def stage_layers(model: nn.Module, x: torch.Tensor, anchor: str, levels: int) -> list[str]:
    """``anchor`` preceded by up to ``levels - 1`` earlier layers at finer grids (closest first,
    returned in forward order); an error when there is none."""
    module = find_layer(model, anchor)
    parent = split_key(anchor)[0].rpartition(".")[0]
    p = probe(model, x)
    own = p.calls_of(module)
    cells = _cells(p, own[0]) if len(own) == 1 else 0
    if not cells:
        raise LayerNotFoundError(f"layer {anchor!r} is not a feature map called once per forward, so it has no stages before it")
    last: dict[int, str] = {}  # cells -> the last sibling call at that grid
    for c in p.calls:
        if c.order >= own[0].order or c.name.rpartition(".")[0] != parent or not c.name or p.counts[id(c.module)] != 1:
            continue
        n = _cells(p, c)
        if n > cells:
            last[n] = c.name
    chosen = sorted(last)[: levels - 1]
    if not chosen:
        raise LayerNotFoundError(
            f"no layer before {anchor!r} (among its siblings) outputs a finer grid, so there are no stages to combine "
            "(a model whose blocks keep one resolution, e.g. a ViT); pass a list of layers"
        )
    return [last[n] for n in reversed(chosen)] + [anchor]
