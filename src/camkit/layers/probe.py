"""What one traced forward of one image says about every module of a model at one input size.

`probe` records (`.trace`) each module call -- output shape, how often the module ran,
whether it runs inside a token mixer -- and the widths of the residual stream (the outputs of
mixers and of the modules around them, tensors inside a tuple they return included), so that MLP
hidden widths (token tensors whose width is not a stream width at that grid) can be told from
feature maps. Results are cached per model and input size while the model keeps the same
submodules; a probe holds no tensors afterwards.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .layout import Layout, patch_size, readings
from .trace import ModuleCall, trace

@dataclass
class Probe:
    """What one traced forward says about every module of a model at one input size."""

    input_hw: tuple[int, ...]  # (H, W), or (T, H, W) for clips and volumes
    patch: Optional[tuple[int, ...]]
    calls: list[ModuleCall]
    counts: dict[int, int]  # id(module) -> number of calls
    stream: dict[tuple[int, ...], set[int]]  # grid shape (without batch and width) -> residual widths
    choice: Optional[str] = None  # the auto layer, once chosen
    second: Optional[dict[int, list[torch.Size]]] = None  # id(module) -> shapes at the second size
    second_hw: Optional[tuple[int, ...]] = None
    raster: dict[tuple[int, str, Layout], bool] = field(default_factory=dict)  # (module, name, reading) -> raster?

    def calls_of(self, module: nn.Module) -> list[ModuleCall]:
        return [c for c in self.calls if c.module is module]

    def hidden(self, call: ModuleCall, layout: Layout) -> bool:
        """A token / channels-last tensor whose width is not a residual-stream width at its grid."""
        if layout.kind not in ("tokens", "nhwc") or call.shape is None:
            return False
        key = grid_key(call.shape, layout)
        widths = self.stream.get(key)
        return widths is not None and int(call.shape[-1]) not in widths


def grid_key(shape: torch.Size, layout: Layout) -> tuple[int, ...]:
    if layout.kind == "tokens" and layout.seq_first:
        return (int(shape[0]),)
    return tuple(int(s) for s in shape[1:-1])


def summarise(model: nn.Module, calls: list[ModuleCall], input_hw: tuple[int, ...]) -> Probe:
    """A `Probe` from the calls of one traced forward at input size ``input_hw``."""
    counts: dict[int, int] = {}
    for c in calls:
        counts[id(c.module)] = counts.get(id(c.module), 0) + 1
    around: set[int] = set()  # calls that are mixers or contain one
    for c in calls:
        if c.mixer:
            p: Optional[ModuleCall] = c
            while p is not None and id(p) not in around:
                around.add(id(p))
                p = p.parent
    stream: dict[tuple[int, ...], set[int]] = {}
    patch = patch_size(model)
    for c in calls:
        if id(c) not in around or c.parent is None:
            continue
        for shape in c.shapes:
            for r in readings(torch.empty(shape, device="meta"), 1, input_hw, patch):
                if r.kind in ("tokens", "nhwc"):
                    stream.setdefault(grid_key(shape, r), set()).add(int(shape[-1]))
    return Probe(input_hw, patch, calls, counts, stream)


Structure = list[tuple[str, "weakref.ref[nn.Module]"]]
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[Structure, dict[tuple[int, ...], Probe]]]" = (
    weakref.WeakKeyDictionary())


def _structure(model: nn.Module) -> Structure:
    """Every submodule by name, held weakly: a probe is valid while the model still has these very modules."""
    return [(name, weakref.ref(m)) for name, m in model.named_modules()]


def _same(structure: Structure, model: nn.Module) -> bool:
    modules = list(model.named_modules())
    return len(modules) == len(structure) and all(
        name == n and ref() is m for (name, m), (n, ref) in zip(modules, structure))


def cached(model: nn.Module, hw: tuple[int, ...]) -> Optional[Probe]:
    """The probe of ``model`` at input size ``hw`` if one was made since its modules last changed (a
    submodule replaced, added or removed drops every probe of the model)."""
    entry = _CACHE.get(model)
    if entry is not None and not _same(entry[0], model):
        forget(model)
        return None
    return None if entry is None else entry[1].get(hw)


def remember(model: nn.Module, p: Probe) -> Probe:
    """Cache ``p`` for its model and input size, without the traced tensors (and their graph)."""
    for c in p.calls:
        c.out = None
    entry = _CACHE.get(model)
    if entry is None or not _same(entry[0], model):
        entry = _CACHE[model] = (_structure(model), {})
    entry[1][p.input_hw] = p
    return p


def forget(model: nn.Module) -> None:
    """Drop every cached probe of ``model`` (done by `cached` when its modules changed)."""
    _CACHE.pop(model, None)


def probe(model: nn.Module, x: torch.Tensor) -> Probe:
    """The (cached) probe of ``model`` at ``x``'s size, from one no-grad forward of its first image.
    Call with the model in the mode it will be explained in."""
    hw = tuple(int(s) for s in x.shape[2:])
    p = cached(model, hw)
    if p is not None:
        return p
    with torch.no_grad():
        calls, _ = trace(model, x[:1].detach(), keep=False)
    return remember(model, summarise(model, calls, hw))
