"""``layer="auto"``: the layer an expert explains, chosen from the model's own evidence.

The rule: the last output that is a feature map (a grid consistent with the input: NCHW,
channels-last or tokens), computed by the model (not the input passed on), not pooling, not an
attention internal or MLP hidden width, from a module called once, on whose grid positions the
top-1 score depends, named after the module that computed it (not an ``Identity`` passing it on),
never the prediction itself, never a map of per-position class scores (one channel per class, the
top-1 score reading only its own: VOLO's ``aux_head``, SqueezeNet's conv classifier), never a
residual branch before its add (the stream after the add is the map; a branch's last module is
not); when another such output feeds the score without passing through it (parallel branches) the
rule cannot decide and the error lists them. Models that carry a ``default_layer`` (camkit's zoo)
and detectors / segmenters (`.presets`) answer first.
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
    hw = tuple(int(s) for s in x.shape[2:])
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
    models), a detector's or segmenter's preset (`.presets.task_layer`), else `auto_layer`."""
    if isinstance(spec, str) and spec == "auto":
        preset = getattr(model, "default_layer", None) or task_layer(model)
        spec = preset if isinstance(preset, str) and preset else auto_layer(model, x)
    return resolve_layers(model, spec)


def _candidates(p: Probe) -> list[tuple[ModuleCall, Layout]]:
    pooled = {id(c.out) for c in p.calls if c.out is not None and isinstance(c.module, POOLING)}
    out = []
    for c in p.calls:
        if c.out is None or c.parent is None or c.out.grad_fn is None:  # no grad_fn: the input itself
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


def _score(model: nn.Module, output: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The top-1 score of one image's output and the class scores it is taken from (None when the
    output has no single score tensor: then a scalar that depends on every output tensor)."""
    try:
        logits = to_logits(output)
        return logits.reshape(1, -1).max(), logits
    except CamkitError:
        try:
            return probe_score(output), None
        except CamkitError as e:
            raise LayerNotFoundError(
                f"layer='auto' needs a score to find the layer the prediction depends on, but the output of "
                f"{type(model).__name__} has none ({e}); pass layer='name'"
            ) from None


def _class_map(grid_grad: torch.Tensor, logits: Optional[torch.Tensor]) -> bool:
    """Whether an output is a map of class scores (a per-token classifier such as VOLO's ``aux_head``,
    a segmentation head): one channel per class, and the top-1 score depends on its own class's
    channel only. ``grid_grad``: the score's gradient read as ``(1, C, h, w)``."""
    if logits is None or logits.dim() < 2 or grid_grad.shape[1] != logits.shape[1]:
        return False
    top = int(torch.unravel_index(logits.detach().reshape(-1).argmax(), logits.shape)[1])
    return torch.nonzero(grid_grad.abs().flatten(2).sum((0, 2))).flatten().tolist() == [top]


def _consumers(root: Any) -> dict[Any, list[Any]]:
    """For every autograd node the score depends on, the nodes that take its result."""
    out: dict[Any, list[Any]] = {}
    for n in _upstream(root):
        for f, _ in n.next_functions:
            if f is not None:
                out.setdefault(f, []).append(n)
    return out


_RESHAPES = ("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward")
_VIEWS = _RESHAPES + ("SliceBackward", "SelectBackward", "AsStridedBackward")


def _unviewed(node: Any) -> Any:
    """The node whose tensor ``node``'s is a view of (a slice, a reshape: ``hidden[:, 1:]``), else ``node``."""
    while node is not None and type(node).__name__.startswith(_VIEWS) and node.next_functions:
        node = node.next_functions[0][0]
    return node


def _residual_branch(node: Any, consumers: dict[Any, list[Any]]) -> bool:
    """Whether the tensor of ``node`` is a residual branch before its add: added (directly, reshaped, or
    scaled by a parameter or constant, as by a layer scale) to a tensor it was itself computed from."""
    above: Optional[set[Any]] = None
    todo = [node]
    while todo:
        n = todo.pop()
        for k in consumers.get(n, []):
            others = [f for f, _ in k.next_functions if f is not None and f is not n]
            kind = type(k).__name__
            if kind.startswith("AddBackward") and others:
                above = _upstream(node) if above is None else above
                if any(_unviewed(o) in above for o in others):
                    return True
            elif kind.startswith("MulBackward") and all(type(o).__name__ == "AccumulateGrad" for o in others):
                todo.append(k)  # times a parameter or a constant
            elif kind.startswith(_RESHAPES):
                todo.append(k)  # the same elements in another shape (TimeSformer's temporal branch)
    return False


def _choose(model: nn.Module, p: Probe, output: Any) -> str:
    score, logits = _score(model, output)
    returned = {id(t) for t in output_tensors(output)}  # the prediction itself (segmentation logits) is no feature map
    scope = search_scope(model)  # a segmenter's backbone, not its decoder
    cands = [(c, r) for c, r in _candidates(p) if id(c.out) not in returned
             and (scope is None or c.name.startswith(scope + "."))]
    if not cands or not score.requires_grad:
        raise LayerNotFoundError(
            f"found no layer with a spatial output in {type(model).__name__} on which the score depends; pass layer='name'"
        )
    grads = torch.autograd.grad(score, [c.out for c, _ in cands], allow_unused=True, retain_graph=True)
    live = []
    for (c, r), g in zip(cands, grads):
        grid = None if g is None else r(g)
        if grid is not None and grid.abs().sum() > 0 and not _class_map(grid, logits):
            live.append((c, r))
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
    consumers = _consumers(score.grad_fn)
    while groups and _residual_branch(groups[-1].out.grad_fn, consumers):
        groups.pop()  # the stream after the add is the map, not the branch added to it
    if not groups:
        raise LayerNotFoundError(
            f"every layer of {type(model).__name__} on which the score depends is a residual branch before its "
            "add; pass layer='name'"
        )
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
