"""LeGrad (Bousselham et al., ICCV 2025, arXiv 2404.03214): a vision transformer explained by the
gradient of each block's class score with respect to that block's attention probabilities."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..core import engine
from ..core.hooks import Hooks
from ..errors import InputError, UnsupportedModelError
from ..layers import resolve_layers
from ..layers.attention import EagerAttention, block_of, token_head, transformer_blocks
from .base import BaseCAM
from .explanation import Context, Maps
from .registry import register


@dataclass
class AttentionPass(engine.Pass):
    """An engine pass over transformer blocks with each block's attention probabilities."""

    attention: list[torch.Tensor] = field(default_factory=list)


def _record_from_here(_module: nn.Module, args: tuple[Any, ...]) -> Optional[tuple[Any, ...]]:
    """Forward pre-hook: autograd records from this block's input on (a leaf, so nothing before it)."""
    torch.set_grad_enabled(True)  # the engine's no_grad context restores the mode after the forward
    if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() and not args[0].requires_grad:
        return (args[0].detach().requires_grad_(True),) + tuple(args[1:])
    return None


@register("legrad")
class LeGrad(BaseCAM):
    """LeGrad (Bousselham et al., ICCV 2025, arXiv 2404.03214): for each transformer block ``l`` the
    class score of its tokens ``s^l = head(mean_i Z^l_i)`` (the model's final norm and classifier
    applied to the mean of the block's output tokens, as the paper's code and torchcam), the gradient
    with respect to the block's attention probabilities ``P^l`` ``(heads, queries, keys)``, and
    ``E^l = mean_{heads, queries} relu(dS^l/dP^l)`` over the patch keys (prefix tokens dropped);
    ``L = mean_l E^l``, min-max normalised. Attention values are not multiplied in.

    ``layer="auto"``: every block (the paper aggregates over all layers); or name the blocks, e.g. the
    last four. ``head``: a callable ``tokens (B, N, D) -> logits`` for
    models whose head camkit does not know (it knows torchvision's, timm's and Hugging Face's ViT
    classifiers and camkit's digits ViT). Fused attention is switched to an eager path for the call
    only (`camkit.layers.attention`: call-scoped replaced forwards, no flag of the model is
    changed, other threads keep the fused path). torchcam's ``LeGrad`` reads torchvision ViTs only;
    camkit's maps equal it there (torchcam needs the blocks listed; it multiplies nothing either).
    ``weights`` is None; ``eigen_smooth`` does not apply (no channels).
    """

    uses_gradients = True
    requires = ("attention",)
    grid_dims = (2,)
    grid_note = ("LeGrad reads a vision transformer's attention over a 2-D token grid (its blocks, head and "
                 "attention probabilities found for image models)")
    cost = "one forward (eager attention in the explained blocks), a backward per block through that block and the head"

    def __init__(self, model: nn.Module, layer: Any = "auto", *,
                 head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if head is not None and not callable(head):
            raise InputError(f"head must be a callable tokens (B, N, D) -> logits (B, classes), got {type(head).__name__}")
        self.head = head

    def _blocks(self) -> list[tuple[str, nn.Module, nn.Module]]:
        """``(name, block, attention)`` of the explained blocks."""
        if isinstance(self.layer, str) and self.layer == "auto":
            found = transformer_blocks(self.model)
            if not found:
                raise UnsupportedModelError(
                    f"LeGrad explains vision transformers: {type(self.model).__name__} has no supported attention "
                    "module (nn.MultiheadAttention, timm Attention, Hugging Face *Attention)"
                )
            return found
        return [(name, *block_of(self.model, m, name)) for name, m in resolve_layers(self.model, self.layer)]

    def _layers(self, x: torch.Tensor) -> tuple[list[str], list[nn.Module]]:
        blocks = self._blocks()
        return [n for n, _, _ in blocks], [b for _, b, _ in blocks]

    def _forward(self, x: torch.Tensor, modules: list[nn.Module], names: list[str]) -> engine.Pass:
        attention = {id(b): a for _, b, a in self._blocks()}
        with Hooks() as hooks:
            eager = EagerAttention(hooks, [attention[id(m)] for m in modules])
            for m in modules:
                hooks.before_forward(m, _record_from_here)
            p = engine.forward(self.model, x, modules, names, record=True)
        for name, n, prob in zip(names, eager.calls, eager.probs):
            if n != 1 or prob is None:
                raise UnsupportedModelError(f"the attention of block {name!r} ran {n} times in one forward; LeGrad needs once")
        return p.extended(AttentionPass, attention=eager.probs)

    def compute(self, ctx: Context) -> Maps:
        head = self.head or token_head(self.model)
        if head is None:
            raise UnsupportedModelError(
                f"LeGrad reads each block's class score through the model's head, and {type(self.model).__name__} has "
                "none camkit knows; pass head=callable(tokens (B, N, D)) -> logits (B, classes)"
            )
        attention = getattr(ctx.pass_, "attention", None)
        assert attention is not None, "LeGrad.compute needs the pass of LeGrad._forward"
        total: Optional[torch.Tensor] = None
        for z, p, to_grid, name in zip(ctx.pass_.acts, attention, ctx.to_grid, ctx.pass_.names):
            seq_first = bool(getattr(to_grid, "seq_first", False))
            tokens = z.transpose(0, 1) if seq_first else z  # (B, N, D)
            if tokens.shape[1] != p.shape[-1]:
                raise UnsupportedModelError(f"block {name!r} outputs {tokens.shape[1]} tokens but attends over {p.shape[-1]}")
            out = head(tokens)
            logits, _ = engine.read_logits(out, tokens.shape[0])
            scores = ctx.targets.scores(out, logits)  # (B, K)
            (g,) = engine.gradients(engine.Pass(out, logits, [p], [name]), scores)  # (K, B, heads, N, N)
            relevance = torch.relu(g).float().mean(dim=(2, 3))  # (K, B, keys)
            grid = to_grid(relevance.permute(2, 1, 0) if seq_first else relevance.permute(1, 2, 0))  # (B, K, h, w)
            total = grid if total is None else total + grid
        assert total is not None
        return [total / len(attention)], None
