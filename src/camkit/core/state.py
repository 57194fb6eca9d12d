"""Leave the user's model exactly as found: training flags, ``requires_grad``, ``.grad``, hooks --
also when calls on one model overlap (several threads explaining a shared model)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..errors import CamkitError
from .hooks import is_stale

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)


@dataclass
class _Held:
    """A module or parameter some running calls hold, with its state from before the first of them."""

    obj: Any
    count: int = 0
    training: bool = False  # modules: the flag as found
    evaled: bool = False  # modules: a call switched this training module to eval
    requires_grad: bool = False  # parameters: as found
    grad: Optional[torch.Tensor] = None


_HELD: dict[int, _Held] = {}  # id(module or parameter) -> _Held, while some call holds it
_GUARD = threading.Condition()
_DEPTH: ContextVar[int] = ContextVar("camkit_preserved_depth", default=0)


def _clash(modules: list[nn.Module], eval_mode: bool) -> Optional[str]:
    """Why this call cannot share the modules with the calls holding them now (None: it can)."""
    for m in modules:
        held = _HELD.get(id(m))
        if held is None:
            continue
        if eval_mode and m.training:
            return f"{type(m).__name__} is being explained in training mode (eval_mode=False) by another call"
        if not eval_mode and held.evaled:
            return f"{type(m).__name__} is being explained in eval mode by another call, and this call asks eval_mode=False"
    return None


def _acquire(model: nn.Module, modules: list[nn.Module], params: list[torch.Tensor], eval_mode: bool) -> None:
    with _GUARD:
        while (why := _clash(modules, eval_mode)) is not None:
            if _DEPTH.get():  # this thread holds a model itself: waiting could wait for ourselves
                raise CamkitError(f"cannot explain the model in this mode now: {why}")
            _GUARD.wait()
        for m in modules:
            _HELD.setdefault(id(m), _Held(m, training=m.training)).count += 1
        for p in params:
            _HELD.setdefault(id(p), _Held(p, requires_grad=p.requires_grad, grad=p.grad)).count += 1
        if eval_mode and any(m.training for m in modules):
            model.eval()
            for m in modules:
                held = _HELD[id(m)]
                held.evaled = held.evaled or (held.training and not m.training)


def _let_go(obj: Any) -> Optional[_Held]:
    """One call less holds ``obj``; returns its record when that was the last call."""
    held = _HELD[id(obj)]
    held.count -= 1
    return _HELD.pop(id(obj)) if held.count == 0 else None


def _release(modules: list[nn.Module], params: list[torch.Tensor]) -> None:
    with _GUARD:
        for m in modules:
            held = _let_go(m)
            if held is not None and m.training != held.training:
                m.training = held.training
            for name in _HOOK_DICTS:
                hooks = m.__dict__.get(name)
                if hooks:
                    for key in [k for k, h in list(hooks.items()) if is_stale(h)]:
                        hooks.pop(key, None)  # its owner may have removed it since the snapshot
        for p in params:
            held = _let_go(p)
            if held is not None:
                if p.requires_grad != held.requires_grad:
                    p.requires_grad_(held.requires_grad)
                if p.grad is not held.grad:
                    p.grad = held.grad
        _GUARD.notify_all()


@contextmanager
def preserved(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run a block with ``model`` (optionally) in eval mode and restore its state afterwards.

    Restored even when the block raises: every module's ``training`` flag, every parameter's
    ``requires_grad`` and ``.grad`` (the same tensor object), and no camkit hook survives its call
    (hooks registered through `camkit.core.hooks` come off when their call ends; any left over
    are removed here). Hooks registered by anything else are left alone.

    Overlapping calls (threads) share the state: the first call on a module or parameter records
    it, the last one to end restores it, so one call never restores the model under another. Calls
    that need the model in different modes (``eval_mode=False`` on a model in training mode beside
    ``eval_mode=True``) cannot share it: a call waits until the other mode's calls have ended
    (a call nested inside another ``preserved`` block raises instead of waiting).
    Cheap when nothing changes: the model is switched to eval only if some module is training.
    """
    modules = list(model.modules())
    params = list({id(p): p for m in modules for p in m._parameters.values() if p is not None}.values())
    _acquire(model, modules, params, eval_mode)
    depth = _DEPTH.set(_DEPTH.get() + 1)
    try:
        yield model
    finally:
        _DEPTH.reset(depth)
        _release(modules, params)
