"""Leave the user's model exactly as found: training flags, ``requires_grad``, ``.grad``, hooks."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.utils.hooks import RemovableHandle

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)


@contextmanager
def preserved(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run a block with ``model`` (optionally) in eval mode and restore its state afterwards.

    Restored even when the block raises: every module's ``training`` flag, every parameter's
    ``requires_grad`` and ``.grad`` (the same tensor object), and no hook registered during the
    block survives it (hook ids only grow, so those are the ids from the block's start on).
    Cheap when nothing changes: the model is switched to eval only if some module is training.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = [p for m in modules for p in m._parameters.values() if p is not None]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    first_new_hook = RemovableHandle.next_id
    try:
        if eval_mode and any(training):
            model.eval()
        yield model
    finally:
        for m, t in zip(modules, training):
            if m.training != t:
                m.training = t
            for name in _HOOK_DICTS:
                hooks = m.__dict__.get(name)
                if hooks:
                    for key in [k for k in hooks if isinstance(k, int) and k >= first_new_hook]:
                        del hooks[key]
        for p, f, g in zip(params, flags, grads):
            if p.requires_grad != f:
                p.requires_grad_(f)
            if p.grad is not g:
                p.grad = g
