"""One traced forward: every module call, its output shape, and which calls run inside a token mixer.

A *token mixer* is the innermost module active when scaled dot-product attention, multi-head
attention or a softmax over tokens runs: an attention block. A softmax over tokens is one along any
dim of a 3-D+ tensor except dim 1 of a 4-D+ one, which is the channel (class) axis of a
``(B, C, h, w)`` map (a segmenter's class softmax); attention normalises scores over keys (the last
dim) or, in factorised attention (CoaT), the keys themselves over the token dim. Calls nested in a
mixer (q/k/v, fused qkv, per-head tensors) are attention internals, never feature maps.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.hooks import Hooks

_ATTENTION = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}


@dataclass(eq=False)
class ModuleCall:
    """One module call of the traced forward."""

    name: str
    module_ref: "weakref.ref[nn.Module]"  # weak: a cached probe must not keep the model alive
    parent: Optional["ModuleCall"]
    order: int = -1  # position in the order calls ended
    shape: Optional[torch.Size] = None
    shapes: tuple[torch.Size, ...] = ()  # every floating-point tensor's shape of the output (also in a tuple, dict)
    out: Any = field(default=None, repr=False)  # the output tensor, only while the probe runs
    mixer: bool = False
    passthrough: bool = False  # returned its input tensor itself, unchanged (Identity, eval Dropout)
    version: int = -1  # the input's version counter when the call started (an in-place op bumps it)

    @property
    def module(self) -> Optional[nn.Module]:
        """The called module (None once it is gone)."""
        return self.module_ref()

    @property
    def internal(self) -> bool:
        """Computed inside a token mixer (an attention internal)."""
        p = self.parent
        while p is not None:
            if p.mixer:
                return True
            p = p.parent
        return False


class _MixerMode(TorchFunctionMode):
    """Marks the innermost running module as a token mixer when attention runs inside it."""

    def __init__(self, stack: list[ModuleCall]) -> None:
        super().__init__()
        self.stack = stack

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        mixing = func in _ATTENTION or (func in _SOFTMAX and _over_tokens(args, kwargs))
        if mixing and len(self.stack) > 1:  # the root model itself is never "a block"
            self.stack[-1].mixer = True
        return func(*args, **kwargs)


def _over_tokens(args: tuple, kwargs: dict) -> bool:
    """A softmax over a token axis: any dim of a 3-D+ tensor but dim 1 of a 4-D+ one (the channels
    of a map: a softmax over the classes of a segmentation output is not token mixing)."""
    t = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(t, torch.Tensor) or t.dim() < 3 or not isinstance(dim, int):
        return False
    return not (t.dim() >= 4 and dim % t.dim() == 1)


def _version(args: Any) -> int:
    """The version counter of a call's first argument (-1: not a tensor, or an inference tensor)."""
    t = args[0] if args else None
    try:
        return int(t._version) if isinstance(t, torch.Tensor) else -1
    except RuntimeError:
        return -1


def trace(model: nn.Module, x: torch.Tensor, keep: bool = True) -> tuple[list[ModuleCall], Any]:
    """Run ``model(x)`` recording every module call (ended order), its output shape and, with
    ``keep``, the output itself; returns the calls and the model output. Autograd follows the
    caller's grad mode."""
    stack: list[ModuleCall] = []
    calls: list[ModuleCall] = []

    def pre(name: str):
        def hook(m: nn.Module, args: Any) -> None:
            stack.append(ModuleCall(name, weakref.ref(m), stack[-1] if stack else None, version=_version(args)))
        return hook

    def post(m: nn.Module, args: Any, out: Any) -> None:
        while stack and stack[-1].module is not m:
            stack.pop()  # a call that raised and was caught by the model
        if not stack:
            return
        call = stack.pop()
        call.order = len(calls)
        call.passthrough = bool(args) and args[0] is out and _version(args) == call.version != -1
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            call.out, call.shape = (out if keep else None), out.shape
        call.shapes = tuple(t.shape for t in output_tensors(out) if t.is_floating_point())
        calls.append(call)

    with Hooks() as hooks:  # they fire for this call only, not for other threads using the model
        for name, m in model.named_modules():
            hooks.before_forward(m, pre(name))
            hooks.on_forward(m, post)
        with _MixerMode(stack):
            output = model(x)
    return calls, output


def output_tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, a (nested) tuple / list / dict, or an object with attributes."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in output_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in output_tensors(v)]
    if hasattr(obj, "__dict__"):
        return [t for v in vars(obj).values() for t in output_tensors(v)]
    return []
