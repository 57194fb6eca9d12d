"""Score-CAM (Wang et al. 2020): channel weights from the class score of the input masked by each
upsampled, normalised channel: ``w = softmax_k(s(x * M_k))``. No gradients."""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core.outputs import to_logits
from ..core.postprocess import normalize, to_input
from ..errors import InputError
from ..targets import Targets
from .base import BaseCAM, chunks, positive_int
from .explanation import Context, Maps
from .gradient import weighted_sum
from .registry import register

@register("scorecam")
class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020): ``M_k = norm(upsample(A_k))`` in [0, 1],
    ``w = softmax_k(s_k)``, ``L = relu(sum_k w_k A_k)``.

    ``s_k`` is the class score of the masked input ``x * M_k``: with ``score="softmax"`` (the paper's
    algorithm and official code) the class probability, with ``score="logit"`` (pytorch-grad-cam)
    the class logit. The paper's baseline term ``-f(X_b)`` is one constant per map and cancels in the
    softmax. A target callable's output is used as the score as is.

    Masked inputs run in chunks of at most ``batch_size`` images (across channels and images), under
    ``no_grad`` with no camkit hooks; masks are built per chunk, never all at once. A channel that is
    constant over the grid has an all-zero mask, so its masked input is all zeros whatever the
    channel or image: that input runs once and its score is shared.
    """

    uses_gradients = False
    cost = "one forward per channel of the layer (masked inputs, batched)"
    expensive = True

    def __init__(
        self,
        model: nn.Module,
        layer: Any = "auto",
        *,
        batch_size: int = 32,
        score: Literal["softmax", "logit"] = "softmax",
        **kw: Any,
    ) -> None:
        super().__init__(model, layer, **kw)
        positive_int("batch_size", batch_size, "masked inputs per pass")
        if score not in ("softmax", "logit"):
            raise InputError(f"score must be 'softmax' (class probability, the paper) or 'logit', got {score!r}")
        self.batch_size, self.score = batch_size, score

    def _class_scores(self, output: Any) -> torch.Tensor:
        """``(n, N)`` class logits or probabilities of a model output."""
        logits = to_logits(output).float()
        return torch.softmax(logits, dim=-1) if self.score == "softmax" else logits

    def _scores(self, output: Any, targets: Targets) -> torch.Tensor:
        """``(n, K)`` scores of the rows of ``output`` for ``targets`` (one row of targets per row)."""
        if targets.fn is not None:
            return targets.scores(output, None).float()
        assert targets.indices is not None
        scores = self._class_scores(output)
        return scores.expand(targets.indices.shape[0], -1).gather(1, targets.indices.to(scores.device))

    def compute(self, ctx: Context) -> Maps:
        x = ctx.x
        batch, size = x.shape[0], (x.shape[-2], x.shape[-1])
        raw, weights = [], []
        for a in ctx.acts:
            c = a.shape[1]
            flat = a.flatten(2)
            constant = flat.amax(-1) == flat.amin(-1)  # (B, C)
            s = torch.empty(batch, ctx.scores.shape[1], c, device=a.device)
            with torch.no_grad():
                if constant.any():  # one all-zero input serves every constant channel of every image
                    out0 = self.model(torch.zeros_like(x[:1]))
                    s0 = self._scores(out0, ctx.targets).expand(batch, -1)  # (B, K)
                    bs, ks = constant.nonzero(as_tuple=True)
                    s[bs, :, ks] = s0[bs].to(s.dtype)
                bi, ki = (~constant).nonzero(as_tuple=True)
                for sl in chunks(bi.numel(), self.batch_size):
                    b, k = bi[sl], ki[sl]
                    region = None if ctx.region is None else ctx.region.select(b)
                    masks = normalize(to_input(a[b, k], size, region))  # (n, H, W), in the input's frame
                    output = self.model(x[b] * masks.unsqueeze(1).to(x.dtype))
                    s[b, :, k] = self._scores(output, ctx.targets.rows(b.cpu())).to(s.dtype)
            w = torch.softmax(s, dim=-1)
            raw.append(weighted_sum(w, a))
            weights.append(w)
        return raw, weights
