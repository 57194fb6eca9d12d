"""Leave the user's model exactly as found: training flags, ``requires_grad``, ``.grad``, hooks."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def preserved(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run a block with ``model`` (optionally) in eval mode and restore its state afterwards.

    Restored even when the block raises: every module's ``training`` flag, every parameter's
    ``requires_grad`` and ``.grad`` (the same tensor object), and the number of hooks of each kind.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    hooks = [{k: dict(getattr(m, k, {})) for k in hook_dicts} for m in modules]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, t, h in zip(modules, training, hooks):
            m.training = t
            for k, saved in h.items():
                live = getattr(m, k, None)
                if live is not None and live.keys() != saved.keys():
                    for key in list(live.keys()):
                        if key not in saved:
                            del live[key]
        for p, f, g in zip(params, flags, grads):
            if p.requires_grad != f:
                p.requires_grad_(f)
            if p.grad is not g:
                p.grad = g
