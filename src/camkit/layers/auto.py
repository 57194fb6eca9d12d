"""``layer="auto"``: the layer an expert explains, chosen from the model's own evidence.

The rule: the last output that is a feature map (a grid consistent with the input: NCHW,
channels-last or tokens), not pooling, not an attention internal or MLP hidden width, from a
module called once, on whose grid positions the top-1 score depends, named after the module that
computed it (not an ``Identity`` passing it on), never the prediction itself; when another such
output feeds the score without passing through it (parallel branches) the rule cannot decide and
the error lists them. Models that carry a ``default_layer`` (camkit's zoo) and detectors /
segmenters (:mod:`.presets`) answer first.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..core.outputs import probe_score, to_logits
from ..errors import CamkitError, LayerNotFoundError
from .layout import Layout, readings
from .names import POOLING, LayerSpec, resolve_layers
from .presets import search_scope, task_layer
from .probe import Probe, cached, remember, summarise
from .trace import ModuleCall, output_tensors, trace


def auto_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The layer an expert explains (see the module docstring): e.g. ``layer4`` on ResNet,
    ``features.29`` on VGG-16, the last block's pre-attention norm on a ViT (timm ``blocks.11.norm1``,
    Hugging Face ``layernorm_before``, torchvision ``ln_1``), the final norm on timm Swin. One probe
    forward + backward of ``x[:1]`` per model and input size (cached)."""
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    p = cached(model, hw)
    if p is not None and p.choice is not None:
        return p.choice
    with torch.enable_grad():
        calls, output = trace(model, x[:1].detach().clone().requires_grad_(True))
        p = summarise(model, calls, hw)
        try:
            p.choice = _choose(model, p, output)
        finally:
            remember(model, p)
    return p.choice


def choose_layers(model: nn.Module, spec: LayerSpec, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` pairs of a layer spec; ``"auto"``: the model's ``default_layer`` (zoo
    models), a detector's or segmenter's preset (:func:`~.presets.task_layer`), else :func:`auto_layer`."""
    if isinstance(spec, str) and spec == "auto":
        preset = getattr(model, "default_layer", None) or task_layer(model)
        spec = preset if isinstance(preset, str) and preset else auto_layer(model, x)
    return resolve_layers(model, spec)


def _candidates(p: Probe) -> list[tuple[ModuleCall, Layout]]:
    pooled = {id(c.out) for c in p.calls if c.out is not None and isinstance(c.module, POOLING)}
    out = []
    for c in p.calls:
        if c.out is None or c.parent is None or not c.out.requires_grad:
            continue
        if id(c.out) in pooled or p.counts[id(c.module)] != 1 or c.internal:  # a block ending in pooling too
            continue
        rs = readings(c.out, 1, p.input_hw, p.patch)
        if rs and not p.hidden(c, rs[0]):
            out.append((c, rs[0]))
    return out


def _upstream(node: Any) -> set[Any]:
    """Every autograd node ``node`` depends on."""
    seen: set[Any] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        todo.extend(f for f, _ in n.next_functions)
    return seen


def _choose(model: nn.Module, p: Probe, output: Any) -> str:
    try:
        score = to_logits(output).reshape(1, -1).max()
    except CamkitError:  # no single score tensor: a scalar that depends on every output tensor
        try:
            score = probe_score(output)
        except CamkitError as e:
            raise LayerNotFoundError(
                f"layer='auto' needs a score to find the layer the prediction depends on, but the output of "
                f"{type(model).__name__} has none ({e}); pass layer='name'"
            ) from None
    returned = {id(t) for t in output_tensors(output)}  # the prediction itself (segmentation logits) is no feature map
    scope = search_scope(model)  # a segmenter's backbone, not its decoder
    cands = [(c, r) for c, r in _candidates(p) if id(c.out) not in returned
             and (scope is None or c.name.startswith(scope + "."))]
    if not cands or not score.requires_grad:
        raise LayerNotFoundError(
            f"found no layer with a spatial output in {type(model).__name__} on which the score depends; pass layer='name'"
        )
    grads = torch.autograd.grad(score, [c.out for c, _ in cands], allow_unused=True, retain_graph=True)
    live = [(c, r) for (c, r), g in zip(cands, grads) if g is not None and r(g).abs().sum() > 0]
    if not live:
        raise LayerNotFoundError(
            f"the top-1 score of {type(model).__name__} has zero gradient at every spatial layer, so no layer "
            "can be chosen automatically (is the classifier initialised to zeros, as torchvision's ViT head "
            "is?); pass layer='name'"
        )
    outermost: dict[int, ModuleCall] = {}  # one entry per output tensor: a block and its last child return one
    for c, _ in live:  # calls are in end order: the enclosing module comes last
        if not c.passthrough or id(c.out) not in outermost:  # name it after a module that computed it
            outermost[id(c.out)] = c
    groups = sorted(outermost.values(), key=lambda c: c.order)
    chosen = groups[-1]
    above = _upstream(chosen.out.grad_fn)
    parallel = []  # outputs feeding the score past the chosen one, the most downstream of each branch
    for c in reversed(groups[:-1]):
        if c.out.grad_fn not in above:
            parallel.append(c)
            above |= _upstream(c.out.grad_fn)
    if parallel:
        names = [c.name for c in reversed(parallel[:4])] + [chosen.name]
        raise LayerNotFoundError(
            f"layer='auto' cannot decide for {type(model).__name__}: the score depends on several layers that "
            f"do not feed each other ({', '.join(repr(n) for n in names)}); pass layer='name' or a list of them"
        )
    return chosen.name
