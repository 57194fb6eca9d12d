"""Ablation-CAM in closed form when what follows the layer is affine in it.

With ``y = F(A)`` the explained score of the layer output ``A`` and ``A_k`` its channel ``k`` (other
channels zero), Ablation-CAM needs ``y - y_k = F(A) - F(A - A_k)`` for every channel. When ``F`` is
affine along every such ablation -- global average pooling, flatten, linear layers, eval-mode
BatchNorm and dropout, and ReLU applied to the layer output itself: the heads of ResNet, DenseNet,
EfficientNet, RegNet --

    y - y_k = sum_ij (dF/dA)_kij A_kij

so every channel's difference comes from one backward pass through the tail and one product, instead
of ``C`` ablated copies of the activation run through the tail.

It is used only when shown to hold for the call at hand, else the caller replays the ablations:
on every image, one replay -- the unablated copy, probe channels zeroed one at a time (those with the
largest activation mass, and random others) and, for ``(B, C, h, w)`` layers, all channels zeroed at
once -- runs under the op-by-op check of `camkit.core.affine.AffineWatch` (any op that is
not affine in the layer output, a data-dependent branch or a random draw rejects, at that op), and
must score what the closed form predicts within a tolerance set by the arithmetic's precision:
``64 eps (|y| + sum_k |y - y_k|)``.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from .affine import AffineWatch, NotAffine
from ...errors import CamkitError, NoGradientError
from ..explanation import Context
from ..gradient import grid_grads

log = logging.getLogger(__name__)

#: (image b, ablated layer outputs: n copies in the layer's own layout, n) -> (n, K) scores
Replay = Callable[[int, torch.Tensor, int], torch.Tensor]
#: (image b, channels (n,), -1 = none zeroed) -> n copies of image b's layer output, channel ks[j] zeroed in copy j
Ablate = Callable[[int, torch.Tensor], torch.Tensor]

PROBES = 8  # probe channels per image: half the largest activation mass, half random
TOLERANCE = 64  # in units of eps * (|y| + sum_k |y - y_k|)


class ClosedForm:
    """Closed-form Ablation-CAM weights for the layers of one call; the gradients of all layers are
    computed once, when a layer first passes the op-by-op check."""

    def __init__(self, ctx: Context, batch_size: int, compute_dtype: Optional[torch.dtype] = None) -> None:
        self.ctx, self.batch_size, self.compute_dtype = ctx, batch_size, compute_dtype
        self._grads: Optional[list[torch.Tensor]] = None
        self._ops: set[str] = set()
        self._used: set[int] = set()

    def used(self, i: int) -> bool:
        """Whether layer ``i``'s weights came from the closed form."""
        return i in self._used

    def weights(self, i: int, ablate: Ablate, replay: Replay, plain: bool) -> Optional[torch.Tensor]:
        """``(B, K, C)`` weights ``(y - y_k) / |y|`` of layer ``i``, or None where the closed form is
        not shown to hold (the caller then replays). ``plain``: the layer output is ``(B, C, h, w)``."""
        raw, grid = self.ctx.pass_.acts[i], self.ctx.acts[i]
        try:
            # replays first: the op-by-op check stops a tail that is not affine at its first such op,
            # before any gradient is computed
            probes = [self._replay_probes(b, raw, grid[b], ablate, replay, plain) for b in range(grid.shape[0])]
            if self._grads is None:
                try:
                    self._grads = grid_grads(self.ctx)
                except NoGradientError as e:
                    raise _Rejected(str(e)) from None
            d = (self._grads[i].double() * grid.double().unsqueeze(1)).flatten(3).sum(-1)  # (B, K, C): y - y_k
            for b, (ks, s) in enumerate(probes):
                self._compare(b, d[b], ks, s, plain, raw)
        except _Rejected as e:
            log.debug("Ablation-CAM layer %r: replaying the ablations (%s)", self.ctx.pass_.names[i], e)
            return None
        log.debug("Ablation-CAM layer %r: closed form (the tail is affine in the layer)", self.ctx.pass_.names[i])
        self._used.add(i)
        y = self.ctx.scores.detach().double()
        denom = torch.where(y.abs() > 0, y.abs(), torch.ones_like(y))
        return (d / denom.unsqueeze(-1)).float()

    def _replay_probes(self, b: int, raw: torch.Tensor, grid: torch.Tensor, ablate: Ablate, replay: Replay,
                       plain: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``b``'s probe channels and the scores of its replays ``(rows, K)``: unablated, each probe
        channel zeroed and, for plain layers, every channel zeroed (in the last pass if there is room)."""
        ks = _probes(grid, PROBES, seed=b)
        rows = torch.cat([ks.new_full((1,), -1), ks])
        parts = []
        for j in range(0, rows.numel(), self.batch_size):
            sel = rows[j:j + self.batch_size]
            ablated, n = ablate(b, sel), sel.numel()
            if plain and j + n == rows.numel() and n < self.batch_size:
                ablated, n = torch.cat([ablated, torch.zeros_like(ablated[:1])]), n + 1
            parts.append(self._scores(b, ablated, n, replay))
        if plain and sum(p.shape[0] for p in parts) == rows.numel():  # no room left: a pass of its own
            parts.append(self._scores(b, torch.zeros_like(raw[b:b + 1]), 1, replay))
        return ks, torch.cat(parts)

    def _scores(self, b: int, ablated: torch.Tensor, n: int, replay: Replay) -> torch.Tensor:
        """``(n, K)`` scores of a replay under the op-by-op check; `_Rejected` if they are not
        affine in the layer output."""
        watch = AffineWatch(ablated)
        try:
            with watch:
                s = replay(b, ablated, n)
        except NotAffine as e:
            raise _Rejected(str(e)) from None
        except (RuntimeError, CamkitError, ValueError, TypeError, IndexError) as e:
            raise _Rejected(f"the replay raised {type(e).__name__}: {e}") from None
        if not watch.affine(s):
            raise _Rejected(watch.reason or "the explained score is not computed from the layer by torch ops")
        self._ops |= watch.ops
        return s.detach().double()

    def _compare(self, b: int, d: torch.Tensor, ks: torch.Tensor, s: torch.Tensor, plain: bool,
                 raw: torch.Tensor) -> None:
        """The replayed scores ``s`` of image ``b`` against the closed form's ``y - y_k`` ``d`` ``(K, C)``;
        `_Rejected` if one differs by more than the tolerance."""
        y = s[0]
        checks = [(y, self.ctx.scores[b].detach().double()), ((y - s[1:1 + ks.numel()]).t(), d[:, ks])]
        if plain:
            checks.append((y - s[-1], d.sum(-1)))
        tol = TOLERANCE * self._eps(raw) * (y.abs() + d.abs().sum(-1))  # (K,)
        for got, want in checks:
            err = (got - want).abs()
            err = err.amax(-1) if err.dim() == 2 else err
            if (err > tol).any():
                raise _Rejected(f"image {b}: a replay differs from the closed form by {err.max().item():.3g} "
                                f"(tolerance {tol.min().item():.3g})")

    def _eps(self, raw: torch.Tensor) -> float:
        """Machine epsilon of the tail's arithmetic: float32 at least, the autocast dtype, and TF32
        where CUDA may use it for the tail's matrix products or convolutions."""
        eps = max(torch.finfo(torch.float32).eps, torch.finfo(self.compute_dtype or raw.dtype).eps)
        if raw.is_cuda and raw.dtype == torch.float32 and (
            (torch.backends.cuda.matmul.allow_tf32 and self._ops & _MATMUL)
            or (torch.backends.cudnn.allow_tf32 and self._ops & _CONV)
        ):
            eps = max(eps, 2.0 ** -10)
        return eps


_MATMUL = {"mm", "bmm", "mv", "dot", "vdot", "matmul", "addmm", "addmv", "addbmm", "baddbmm", "linear"}
_CONV = {"convolution", "_convolution", "conv1d", "conv2d", "conv3d"}


class _Rejected(Exception):
    pass


def _probes(grid: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Up to ``n`` channels of one image's ``(C, h, w)`` activations that are not all zero: those with
    the largest activation mass ``sum_ij |A_kij|``, then random ones."""
    mass = grid.abs().flatten(1).sum(1)
    idx = mass.nonzero().flatten()
    if idx.numel() <= n:
        return idx
    top = idx[mass[idx].topk(n // 2).indices]
    rest = idx[~torch.isin(idx, top)]
    pick = torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed))[: n - top.numel()]
    return torch.cat([top, rest[pick.to(rest.device)]])
