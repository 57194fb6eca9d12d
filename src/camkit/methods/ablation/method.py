"""Ablation-CAM: ``w_k = (y - y_k) / |y|``, ``y_k`` the score with channel ``k`` of the layer zeroed.

Only the network *after* the layer depends on the ablation, so the layer's output is computed once
and only the tail runs on batches of ablated copies (`.replay`); where the tail is affine in
the layer, one backward pass gives every channel (`.closed_form`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

from ...core import engine
from ...core.hooks import Hooks
from ...core.outputs import to_logits
from ...core.precision import autocast_dtype, score_tolerance
from ...errors import InputError, UnsupportedModelError
from ..base import BaseCAM, chunks, per_pass, positive_int
from ..explanation import Context, Maps
from ..gradient import weighted_sum
from ..registry import register
from .closed_form import ClosedForm
from .replay import Plan, Replay, TracedPass, Tracer, pick


def _logits_or_none(output: Any) -> Optional[torch.Tensor]:
    try:
        return to_logits(output)
    except Exception:
        return None


class _TailMismatch(Exception):
    pass


class _Ablator:
    """Batches of copies of one image's layer output, copy ``j`` with grid channel ``ks[j]`` zeroed
    (``-1``: nothing zeroed).

    The batch lives in a buffer reused from pass to pass. For ``(B, C, h, w)`` outputs, when the
    previous pass left the buffer untouched (its version counter says no in-place op wrote to it)
    only the previously zeroed channels are restored, instead of rewriting every copy."""

    def __init__(self, act: torch.Tensor, to_grid: Callable[[torch.Tensor], torch.Tensor], name: str, plain: bool) -> None:
        self.act, self.to_grid, self.name, self.plain = act, to_grid, name, plain
        self._buffers: dict[int, torch.Tensor] = {}
        self._index: dict[int, torch.Tensor] = {}
        self._clean: dict[int, tuple[int, int, torch.Tensor, torch.Tensor]] = {}  # n -> (version, b, rows, ks)

    def __call__(self, b: int, batch: int, ks: torch.Tensor) -> torch.Tensor:
        n = ks.numel()
        zero = ks >= 0
        rows, ks = torch.arange(n, device=ks.device)[zero], ks[zero]
        src = pick(self.act, b, batch, n)
        if n not in self._buffers:
            self._buffers[n] = torch.empty(src.shape, dtype=src.dtype, device=src.device)
        out = self._buffers[n]
        if self.plain:  # a (B, C, h, w) output
            last = self._clean.get(n)
            if last is not None and last[0] == out._version and last[1] == b:
                out[last[2], last[3]] = self.act[b, last[3]]
            else:
                out.copy_(src)
            out[rows, ks] = 0
            self._clean[n] = (out._version, b, rows, ks)
            return out
        out.copy_(src)
        if n not in self._index:
            self._index[n] = self._grid_index(out.shape).to(ks.device)
        out.view(-1)[self._index[n][rows, ks].reshape(-1)] = 0
        return out

    def _grid_index(self, shape: torch.Size) -> torch.Tensor:
        """For a raw layer output of ``shape``: the flat position in it of every element of its
        ``(n, C, h, w)`` grid view (found by passing an index tensor through the grid function)."""
        idx = self.to_grid(torch.arange(shape.numel()).view(shape))
        if idx.dtype != torch.long or idx.dim() < 4:
            raise UnsupportedModelError(
                f"Ablation-CAM zeroes channels of layer {self.name!r} through its reshape function, which must "
                f"only move elements (view/permute/reshape/index); it turned an index tensor into {idx.dtype} "
                f"{tuple(idx.shape)}"
            )
        return idx


@register("ablationcam")
class AblationCAM(BaseCAM):
    """Ablation-CAM (Ramaswamy 2020): ``w_k = (y - y_k) / |y|``, ``L = relu(sum_k w_k A_k)``.

    ``y`` is the explained score (a logit) and ``y_k`` the score with channel ``k`` of the layer's
    activation set to zero (for token layers: channel ``k`` of the grid tokens; prefix tokens are
    left alone). The paper divides by ``y``; dividing by ``|y|`` keeps "positive weight = the channel
    supports the class" when ``y < 0`` (where ``y == 0`` the weights are ``y - y_k``). The divisor is
    one positive number per map, so the normalised map is the same either way.

    ``recompute="tail"`` (default): one normal forward records every module call that ends before
    the layer starts; the ablation passes make those modules return their cached outputs (a view
    expanded along the batch, no copy) and the layer return the ablated activations, so only the
    glue code before the layer and the network after it run -- for ResNet ``layer4`` that is pooling
    and the classifier. Branches after the layer that read earlier tensors (skip connections) get
    them from the cache, so results equal a full recomputation. Each image's first batch also
    carries an unablated copy; if it does not reproduce the normal pass's score (a model whose
    forward modifies cached tensors in place, or branches on data) the method warns and falls back
    to ``recompute="full"``, which reruns the whole model and only replaces the layer's output.
    ``batch_size`` bounds the number of ablated copies per pass. Several targets (TopK) share the
    same ablation passes. Channels that are zero everywhere are not run: ablating them changes
    nothing, so their weight is exactly 0. Target callables must score each row of the output on
    its own.

    ``closed_form=True`` (default): when what follows the layer is affine in it (pooling, flatten,
    linear layers: the heads of ResNet, DenseNet, EfficientNet, RegNet) ``y - y_k`` is channel ``k``'s
    contribution ``sum_ij (dy/dA)_kij A_kij`` and all channels come from one backward pass through the
    tail, shown to hold op by op and on replayed probe channels per image; otherwise the ablations are
    replayed (see `camkit.methods.ablation.closed_form`). ``closed_form=False`` always replays.
    """

    uses_gradients = False
    cost = "one forward, then the layers after the target once per channel (affine tails: one backward)"

    def __init__(
        self,
        model: nn.Module,
        layer: Any = "auto",
        *,
        batch_size: int = 64,
        recompute: Literal["tail", "full"] = "tail",
        closed_form: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(model, layer, **kw)
        positive_int("batch_size", batch_size, "ablated copies per pass")
        if recompute not in ("tail", "full"):
            raise InputError(f"recompute must be 'tail' (run only the network after the layer) or 'full', got {recompute!r}")
        if not isinstance(closed_form, bool):
            raise InputError(f"closed_form must be True or False, got {closed_form!r}")
        self.batch_size, self.recompute, self.closed_form = batch_size, recompute, closed_form

    def _forward(self, x: torch.Tensor, modules: list[nn.Module], names: list[str]) -> engine.Pass:
        tracer = Tracer(modules)
        # the closed form needs dy/dA: autograd records the network after the layer (only)
        record = self.closed_form and self.recompute == "tail" and not torch.is_inference_mode_enabled()
        with Hooks() as hooks:
            tracer.attach(hooks, self.model)
            p = engine.forward(self.model, x, modules, names, record=record)
        return p.extended(TracedPass, tracer=tracer)

    def compute(self, ctx: Context) -> Maps:
        tracer = getattr(ctx.pass_, "tracer", None)
        assert tracer is not None, "AblationCAM.compute needs the traced pass of AblationCAM._forward"
        raw, weights = [], []
        closed = ClosedForm(ctx, per_pass(self.batch_size, ctx.x), autocast_dtype(self.precision)) if ctx.scores.requires_grad else None
        for i, name in enumerate(ctx.pass_.names):
            w = None
            if self.recompute == "tail":
                plan = tracer.plan(i, name, tail=True)
                try:
                    if closed is not None:
                        ablate = _Ablator(ctx.pass_.acts[i], ctx.to_grid[i], name, plain=self._plain(ctx, i))
                        w = closed.weights(i, lambda b, ks: ablate(b, ctx.x.shape[0], ks),
                                           lambda b, a, n: self._replay(ctx, plan, b, a, n, verify=True), self._plain(ctx, i))
                    if w is None:
                        w = self._weights(ctx, i, plan, verify=True)
                except _TailMismatch as e:
                    warnings.warn(
                        f"Ablation-CAM could not replay only the network after layer {name!r} ({e}); "
                        "recomputing the whole model per ablation batch instead (recompute='full')",
                        RuntimeWarning, stacklevel=3,
                    )
            if w is None:
                w = self._weights(ctx, i, tracer.plan(i, name, tail=False), verify=False)
            if self.precision != "fp32" and not (closed is not None and closed.used(i)):
                warnings.warn(
                    f"Ablation-CAM replayed the ablations of layer {name!r} under precision={self.precision!r}: "
                    "each weight is a difference of two scores with ~3 significant digits, so weights below "
                    "~1% of the score are rounding noise; use precision='fp32' for this layer", RuntimeWarning, stacklevel=3,
                )
            raw.append(weighted_sum(w, ctx.acts[i]))
            weights.append(w)
        return raw, weights

    def _weights(self, ctx: Context, i: int, plan: Plan, verify: bool) -> torch.Tensor:
        """``(B, K, C)`` weights of layer ``i``."""
        act = ctx.pass_.acts[i]
        x = ctx.x
        batch = x.shape[0]
        c = ctx.acts[i].shape[1]
        out = []
        ablate = _Ablator(act, ctx.to_grid[i], ctx.pass_.names[i], plain=self._plain(ctx, i))
        live = ctx.to_grid[i](act).flatten(2).ne(0).any(-1)  # (B, C): an all-zero channel ablates to itself
        for b in range(batch):
            alive = live[b].nonzero().flatten().to(act.device)
            channels = torch.cat([alive.new_full((1,), -1), alive])  # -1: the unablated copy
            scores = []
            for sl in chunks(channels.numel(), per_pass(self.batch_size, x)):
                ks = channels[sl]
                n = ks.numel()
                scores.append(self._replay(ctx, plan, b, ablate(b, batch, ks), n, verify).detach().clone())
            s = torch.cat(scores)  # (1 + alive channels, K), in the model's dtype
            y = s[0]
            y_k = y.expand(c, -1).clone()
            y_k[alive] = s[1:]
            if verify:
                y0 = ctx.scores[b].detach().to(y.dtype)
                tol = score_tolerance(self.precision)
                if not torch.allclose(y, y0, rtol=tol, atol=tol * (1.0 + float(y0.abs().max()))):
                    raise _TailMismatch(f"the unablated replay scored {y.tolist()} instead of {y0.tolist()}")
            denom = torch.where(y.abs() > 0, y.abs(), torch.ones_like(y))
            out.append(((y - y_k) / denom).t().float())  # (K, C)
        return torch.stack(out)

    def _replay(self, ctx: Context, plan: Plan, b: int, ablated: torch.Tensor, n: int, verify: bool) -> torch.Tensor:
        """``(n, K)`` scores of image ``b`` with the layer's output replaced by ``ablated`` (n copies)."""
        x = ctx.x[b:b + 1].expand(n, *ctx.x.shape[1:])
        try:
            output = plan.run(self.model, x, Replay(b, ctx.x.shape[0], n, ablated))
        except RuntimeError as e:
            if not verify:
                raise
            raise _TailMismatch(f"the replay raised {type(e).__name__}: {e}") from e
        if verify and plan.cache_modified():
            raise _TailMismatch("the forward modified a tensor computed before the layer in place")
        return ctx.targets.rows(torch.full((n,), b, dtype=torch.long)).scores(output, _logits_or_none(output))

    def _plain(self, ctx: Context, i: int) -> bool:
        """The layer's output is read as a ``(B, C, h, w)`` grid as it is."""
        return getattr(ctx.to_grid[i], "kind", None) == "nchw"
