"""One forward pass that captures the target layers' outputs, recording autograd only after them.

Everything before the first target layer runs under ``no_grad``; a forward hook on the target
turns its output into a leaf that requires grad and switches autograd on for the rest of the
forward. Gradients then come from ``torch.autograd.grad`` on those outputs alone: the backward
pass only runs through the layers after the target, no parameter gradient is computed and the
user's ``.grad`` is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError, NoGradientError, UnsupportedModelError
from .hooks import Hooks
from .keys import replace, select, split_key
from .outputs import to_logits


@dataclass
class Pass:
    """The result of `forward`: model output, its logits (if any) and the captured layer outputs."""

    output: Any
    logits: Optional[torch.Tensor]
    acts: list[torch.Tensor]
    names: list[str]
    logits_error: str = ""  # why ``logits`` is None (the output holds no single (B, N) class-score tensor)

    def extended(self, cls: type, **extra: Any) -> Any:
        """This pass as an instance of the subclass ``cls`` with its ``extra`` fields."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(self)}, **extra)


def forward(
    model: nn.Module,
    x: torch.Tensor,
    modules: Sequence[nn.Module],
    names: Sequence[str],
    record: bool = True,
    from_input: bool = False,
) -> Pass:
    """Run ``model(x)`` capturing the outputs of ``modules``; with ``record`` they carry a graph to the output.

    ``from_input``: record autograd from ``x`` on (pass an ``x`` that requires grad), so gradients
    with respect to the input exist too (FullGrad); the captured outputs are then part of that graph.
    """
    captured: list[Optional[torch.Tensor]] = [None] * len(modules)

    def make_hook(i: int):
        keys = split_key(names[i])[1]  # "backbone[0]": element "0" of the layer's container output

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            t = select(out, keys, names[i])
            if captured[i] is not None:
                raise InputError(
                    f"layer {names[i]!r} is called more than once in one forward (outputs "
                    f"{tuple(captured[i].shape)} and {tuple(t.shape)}), so its output is not one feature map; "
                    "choose a layer the forward calls once (e.g. its parent block)"
                )
            if record:
                if not t.requires_grad:
                    t = t.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # record from here on; the outer no_grad restores it
            captured[i] = t
            return replace(out, keys, t.clone())  # in-place ops after the layer must not change what was captured

        return hook

    with Hooks() as hooks:  # they fire for this call only, not for other threads using the model
        for i, m in enumerate(modules):
            hooks.on_forward(m, make_hook(i))
        with torch.enable_grad() if from_input else torch.no_grad():
            output = model(x)
    missing = [n for n, a in zip(names, captured) if a is None]
    if missing:
        raise InputError(f"layer(s) {missing} were not called during the model's forward pass; pick layers the forward uses")
    logits, why = read_logits(output, x.shape[0])
    return Pass(output, logits, [a for a in captured if a is not None], list(names), why)


def read_logits(output: Any, batch: int) -> tuple[Optional[torch.Tensor], str]:
    """The class scores of a model output, or None and the reason they cannot be read."""
    try:
        return to_logits(output, batch), ""
    except Exception as exc:  # a callable target may still explain this output; keep the reason
        return None, str(exc)


def gradients(p: Pass, scores: torch.Tensor) -> list[torch.Tensor]:
    """d scores[:, k] / d layer output for every k: one tensor ``(K, *layer_shape)`` per layer.

    Images are independent in eval mode, so the gradient of the batch sum is each image's gradient.
    The K backward passes run as one batched (vmap) backward when autograd can batch every op of
    the tail -- the tail's weights are then read once instead of K times -- else one after another.
    """
    if not scores.requires_grad:
        raise NoGradientError(
            f"the explained scores do not depend on layer(s) {p.names}: the output was computed without "
            "gradient (does the forward use .detach(), numpy or torch.no_grad() after the layer?)"
        )
    k_total = scores.shape[1]
    with torch.enable_grad():
        grads: Optional[Sequence[Optional[torch.Tensor]]] = None
        if k_total > 1:
            eye = torch.eye(k_total, dtype=scores.dtype, device=scores.device)
            one_hot = eye[:, None, :].expand(k_total, *scores.shape)  # (K, B, K): select score k
            try:  # (no warnings filter here: it is process-wide and would reach other threads)
                grads = torch.autograd.grad(
                    scores, p.acts, grad_outputs=one_hot, is_grads_batched=True,
                    retain_graph=True, allow_unused=True,
                )
            except (RuntimeError, NotImplementedError):
                grads = None
        if grads is None:
            per_k = [
                torch.autograd.grad(scores[:, k].sum(), p.acts, retain_graph=k < k_total - 1, allow_unused=True)
                for k in range(k_total)
            ]
            grads = [None if any(g[i] is None for g in per_k) else torch.stack([g[i] for g in per_k])
                     for i in range(len(p.acts))]
    for name, g in zip(p.names, grads):
        if g is None:
            raise NoGradientError(f"the explained score does not depend on layer {name!r}")
    return list(grads)  # type: ignore[arg-type]


def hessian_vector_products(p: Pass, scores: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``dS_k/dA`` and ``H A = (d^2 S_k / dA^2) A`` for each layer output ``A`` and score ``k``: one tensor
    ``(K, *layer_shape)`` per layer for each.

    Per score: one backward with ``create_graph`` and one double backward with the layer output itself as
    the vector, both through the layers after the target only (nothing before it was recorded). ``H A``
    is 0 where the tail is piecewise linear in ``A`` (ReLU networks with a linear head).
    """
    if not scores.requires_grad:
        raise NoGradientError(f"the explained scores do not depend on layer(s) {p.names}")
    grads: list[list[torch.Tensor]] = [[] for _ in p.acts]
    hvps: list[list[torch.Tensor]] = [[] for _ in p.acts]
    with torch.enable_grad():
        for k in range(scores.shape[1]):
            g_k = torch.autograd.grad(scores[:, k].sum(), p.acts, create_graph=True, allow_unused=True)
            for i, (name, a, g) in enumerate(zip(p.names, p.acts, g_k)):
                if g is None:
                    raise NoGradientError(f"the explained score does not depend on layer {name!r}")
                hv = None
                if g.requires_grad:  # else the gradient is constant in A: H = 0
                    try:
                        (hv,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True)
                    except (RuntimeError, NotImplementedError) as exc:
                        raise UnsupportedModelError(
                            f"second derivatives of the layers after {name!r} are not available in PyTorch "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); explain this model with a "
                            "first-order method such as 'gradcam'"
                        ) from exc
                grads[i].append(g.detach())
                hvps[i].append(torch.zeros_like(a) if hv is None else hv.detach())
    return [torch.stack(g) for g in grads], [torch.stack(h) for h in hvps]
