"""A vision transformer's blocks, their attention probabilities for one call, and its head on tokens.

Fused attention (timm's ``fused_attn``, Hugging Face's ``sdpa``, ``nn.MultiheadAttention`` called
with ``need_weights=False``) never builds the attention probabilities. `EagerAttention` makes
each supported attention module run an eager path that keeps them, for one call only: the module's
forward is replaced through `camkit.core.hooks` (call-scoped), so other threads keep the
module's own (fused) forward, and no attribute of the model changes -- no global flag is flipped.

Supported attention modules (`attention_kind`):

- ``"mha"``: ``nn.MultiheadAttention`` doing self-attention without masks (torchvision ViT,
  ``nn.TransformerEncoderLayer``): recomputed from its own weights, ``P = softmax(q k^T / sqrt(d))``,
  output ``out_proj(P v)``;
- ``"timm"``: a module with a boolean ``fused_attn`` flag and an ``attn_drop`` dropout applied to the
  probabilities (timm's ``Attention`` and its relatives): its own forward runs on a shallow copy with
  ``fused_attn=False``, and ``P`` is read where ``attn_drop`` is applied;
- ``"hf"``: a Hugging Face ``...Attention`` module that reads ``config._attn_implementation``: its own
  forward runs on a shallow copy whose config copy says ``"eager"``, and ``P`` is its second output.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hooks import Hooks
from ..errors import UnsupportedModelError

_NONE = object()


def attention_kind(m: nn.Module) -> Optional[str]:
    """``"mha"``, ``"timm"`` or ``"hf"`` for a supported attention module (see the module docstring), else None."""
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    if isinstance(getattr(m, "fused_attn", None), bool) and isinstance(getattr(m, "attn_drop", None), nn.Module):
        return "timm"
    config = getattr(m, "config", None)
    if type(m).__name__.endswith("Attention") and getattr(config, "_attn_implementation", _NONE) is not _NONE:
        return "hf"
    return None


def _attentions(module: nn.Module) -> list[nn.Module]:
    """The supported attention modules inside ``module`` (or itself), innermost only."""
    found = [m for m in module.modules() if attention_kind(m) is not None]
    return [m for m in found if not any(o is not m and any(c is o for c in m.modules()) for o in found)]


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, block, attention)`` of every transformer block, in registration order: a block is the
    nearest ancestor of an attention module that is an element of a ``ModuleList`` / ``Sequential``
    (attention outside such a list, e.g. an attention-pooling head, is no block)."""
    names = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    out = []
    for attn in _attentions(model):
        name = names[id(attn)]
        block = None
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):  # from the attention up: the first ancestor held by a list
            parent = modules[".".join(parts[:i - 1])] if i > 1 else model
            if isinstance(parent, (nn.ModuleList, nn.Sequential)):
                block = ".".join(parts[:i])
                break
        if block is not None:
            out.append((block, modules[block], attn))
    return out


def block_of(model: nn.Module, module: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """The ``(block, attention)`` for a layer the user named: a transformer block holding exactly one
    supported attention module, or such an attention module itself."""
    inside = _attentions(module)
    if len(inside) == 1:
        return module, inside[0]
    blocks = [n for n, _, _ in transformer_blocks(model)]
    what = "no" if not inside else f"{len(inside)}"
    raise UnsupportedModelError(
        f"layer {name!r} holds {what} supported attention modules; LeGrad explains transformer blocks with one "
        f"(nn.MultiheadAttention, timm Attention, Hugging Face *Attention). Blocks of this model: "
        f"{', '.join(blocks[:6]) + (' ...' if len(blocks) > 6 else '') if blocks else 'none'}"
    )


def token_head(model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """``tokens (B, N, D) -> logits``: the model's final norm and classifier applied to the mean of the
    tokens (LeGrad's reading of an intermediate layer), for torchvision, timm-style and Hugging Face
    ViT classifiers; None when the model has none of these heads."""
    for m in model.modules():  # outermost first
        encoder, heads = getattr(m, "encoder", None), getattr(m, "heads", None)
        if isinstance(getattr(encoder, "ln", None), nn.Module) and isinstance(heads, nn.Module):  # torchvision
            return lambda z, m=m: m.heads(m.encoder.ln(z.mean(1)))
        norm, head = getattr(m, "norm", None), getattr(m, "head", None)
        if isinstance(norm, nn.Module) and isinstance(head, nn.Module):  # timm, camkit's digits ViT
            fc_norm = getattr(m, "fc_norm", None)
            fc_norm = fc_norm if isinstance(fc_norm, nn.Module) else nn.Identity()
            return lambda z, m=m, fc=fc_norm: m.head(fc(m.norm(z.mean(1))))
        inner = getattr(m, str(getattr(m, "base_model_prefix", "")), None)
        if isinstance(getattr(m, "classifier", None), nn.Module) and isinstance(getattr(inner, "layernorm", None), nn.Module):
            return lambda z, m=m, inner=inner: m.classifier(inner.layernorm(z.mean(1)))  # Hugging Face
    return None


class EagerAttention:
    """The attention probabilities ``P`` ``(B, heads, N, N)`` of ``attentions`` in the call of ``hooks``
    (see the module docstring); ``probs[i]`` is set when attention ``i`` runs."""

    def __init__(self, hooks: Hooks, attentions: list[nn.Module]) -> None:
        self.probs: list[Optional[torch.Tensor]] = [None] * len(attentions)
        self.calls = [0] * len(attentions)
        for i, m in enumerate(attentions):
            kind = attention_kind(m)
            if kind == "mha":
                hooks.replace_forward(m, self._mha(i, m))
            elif kind == "timm":
                hooks.on_forward(m.attn_drop, lambda _m, _a, out, i=i: self._store(i, out))
                hooks.replace_forward(m, self._shadow(m, fused_attn=False))
            elif kind == "hf":
                hooks.replace_forward(m, self._hf(i, m))
            else:
                raise UnsupportedModelError(f"{type(m).__name__} is not a supported attention module")

    def _store(self, i: int, p: Any) -> torch.Tensor:
        if not isinstance(p, torch.Tensor) or p.dim() != 4:
            raise UnsupportedModelError(f"attention {i} did not give its probabilities as a (B, heads, N, N) tensor")
        if not p.requires_grad:  # the block's input did not record autograd: start here
            p = p.detach().requires_grad_(True)
        self.probs[i] = p
        self.calls[i] += 1
        return p

    @staticmethod
    def _shadow(m: nn.Module, **attrs: Any) -> Callable[..., Any]:
        """A forward running the module's class forward on a shallow copy with ``attrs`` changed."""
        def forward(_original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            shadow = copy.copy(m)
            shadow.__dict__.pop("forward", None)  # the call router, not the class's forward
            shadow.__dict__.update(attrs)
            return type(m).forward(shadow, *args, **kwargs)
        return forward

    def _hf(self, i: int, m: nn.Module) -> Callable[..., Any]:
        config = copy.copy(m.config)
        key = "_attn_implementation_internal" if "_attn_implementation_internal" in vars(config) else "_attn_implementation"
        vars(config)[key] = "eager"
        if config._attn_implementation != "eager":
            raise UnsupportedModelError(f"cannot switch {type(m).__name__} to eager attention for the call")
        shadow = self._shadow(m, config=config)

        def forward(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            out = shadow(original, *args, **kwargs)
            if not isinstance(out, tuple) or len(out) < 2:
                raise UnsupportedModelError(f"{type(m).__name__} does not return its attention probabilities")
            return (out[0], self._store(i, out[1])) + tuple(out[2:])
        return forward

    def _mha(self, i: int, m: nn.MultiheadAttention) -> Callable[..., Any]:
        def forward(_original: Callable[..., Any], query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                    attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                    is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
            if not (query is key and key is value) or key_padding_mask is not None or attn_mask is not None or is_causal:
                raise UnsupportedModelError("LeGrad reads nn.MultiheadAttention doing self-attention without masks")
            if m.bias_k is not None or m.add_zero_attn or not m._qkv_same_embed_dim:
                raise UnsupportedModelError("LeGrad reads nn.MultiheadAttention with one q/k/v projection, no added keys")
            x = query if m.batch_first else query.transpose(0, 1)  # (B, N, E)
            b, n, e = x.shape
            h = m.num_heads
            q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)
            p = torch.softmax((q * (e // h) ** -0.5) @ k.transpose(-2, -1), dim=-1)
            if m.training and m.dropout > 0:
                p = F.dropout(p, m.dropout)
            p = self._store(i, p)
            out = F.linear((p @ v).transpose(1, 2).reshape(b, n, e), m.out_proj.weight, m.out_proj.bias)
            weights = (p.mean(1) if average_attn_weights else p) if need_weights else None
            return (out if m.batch_first else out.transpose(0, 1)), weights
        return forward
