"""The Score-CAM family: channel weights from the class score of the input masked by each upsampled,
normalised channel. Score-CAM (one mask per channel), SS-CAM (noisy masks, averaged) and IS-CAM
(scaled masks, averaged) share one batched, bounded-memory loop of masked forwards and differ only
in the masks of each sample (`ScoreCAM.masks`). No gradients."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import nn

from ..core.outputs import to_logits
from ..core.postprocess import normalize, to_input
from ..errors import InputError
from ..targets import Targets
from .base import BaseCAM, chunks, per_pass, positive_int
from .explanation import Context, Maps
from .gradient import weighted_sum
from .registry import register


@register("scorecam")
class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020): ``M_k = norm(upsample(A_k))`` in [0, 1],
    ``w = softmax_k(s_k)``, ``L = relu(sum_k w_k A_k)``.

    ``s_k`` is the class score of the masked input ``x * M_k``: with ``score="softmax"`` (the paper's
    algorithm and official code) the class probability, with ``score="logit"`` (pytorch-grad-cam,
    torchcam) the class logit. The paper's baseline term ``-f(X_b)`` is one constant per map and
    cancels in the softmax. A target callable's output is used as the score as is.

    Masked inputs run in chunks of at most ``batch_size`` images (across channels, samples and
    images; a clip or volume of T frames counts as T images), under ``no_grad`` with no camkit hooks; masks are built per chunk, never all at once. A
    channel that is constant over the grid has an all-zero mask, so its masked input is all zeros
    whatever the channel or image: that input runs once and its score is shared.

    Subclasses draw ``samples`` masks per channel (`masks`) and average their scores:
    ``s_k = 1/N sum_j s(x * M_k^(j))``.
    """

    uses_gradients = False
    cost = "one forward per channel of the layer (masked inputs, batched)"
    expensive = True
    #: an all-zero map gives an all-zero masked input in every sample (so it runs once)
    zero_mask_is_zero_input: ClassVar[bool] = True

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
        self.samples = 1

    def call_state(self) -> Any:
        """What one call's masks share (SS-CAM: the noise seed); None for Score-CAM."""
        return None

    def masks(self, m: torch.Tensor, k: torch.Tensor, j: torch.Tensor, state: Any) -> torch.Tensor:
        """The masks of samples ``j`` ``(n,)`` for the normalised, upsampled maps ``m`` ``(n, *size)``
        of channels ``k`` ``(n,)``. Score-CAM: the map itself."""
        return m

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
        raw, weights = [], []
        state = self.call_state()
        for a in ctx.acts:
            w = torch.softmax(self._channel_scores(ctx, a, state), dim=-1)  # (B, K, C)
            raw.append(weighted_sum(w, a))
            weights.append(w)
        return raw, weights

    def _channel_scores(self, ctx: Context, a: torch.Tensor, state: Any) -> torch.Tensor:
        """``(B, K, C)``: per channel, the mean score of its ``samples`` masked inputs."""
        x = ctx.x
        batch, c, n = x.shape[0], a.shape[1], self.samples
        size = tuple(x.shape[2:])
        flat = a.flatten(2)
        constant = flat.amax(-1) == flat.amin(-1)  # (B, C)
        if not self.zero_mask_is_zero_input:
            constant = torch.zeros_like(constant)
        total = torch.zeros(batch, c, ctx.scores.shape[1], device=a.device)  # sum over samples
        with torch.no_grad():
            if constant.any():  # one all-zero input serves every sample of every constant channel of every image
                s0 = self._scores(self.model(torch.zeros_like(x[:1])), ctx.targets).expand(batch, -1)  # (B, K)
                bs, ks = constant.nonzero(as_tuple=True)
                total[bs, ks] = n * s0[bs].to(total.dtype)
            bi, ki = (~constant).nonzero(as_tuple=True)
            for sl in chunks(bi.numel() * n, per_pass(self.batch_size, x)):  # (image, channel) pairs x samples, sample-minor
                idx = torch.arange(sl.start, sl.stop, device=bi.device)
                pair, j = idx // n, idx % n
                first, inverse = pair.unique(return_inverse=True)
                b, k = bi[first], ki[first]
                region = None if ctx.region is None else ctx.region.select(b)
                m = normalize(to_input(a[b, k], size, region), dims=len(size))[inverse]  # (n, *size), input's frame
                masks = self.masks(m, k[inverse], j, state)
                output = self.model(x[b[inverse]] * masks.unsqueeze(1).to(x.dtype))
                rows = b[inverse]
                scores = self._scores(output, ctx.targets.rows(rows.cpu())).to(total.dtype)
                total.index_put_((rows, k[inverse]), scores, accumulate=True)
        return (total / n).transpose(1, 2)


def _samples(n: int) -> int:
    return positive_int("samples", n, "masked inputs per channel")


@register("sscam")
class SSCAM(ScoreCAM):
    """SS-CAM (Wang et al. 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization"):
    Score-CAM with noise added to the masks, ``M_k^(j) = norm(upsample(A_k)) + sigma * eps_jk``,
    ``eps_jk ~ N(0, 1)`` at the input's resolution, ``s_k = 1/N sum_j s(x * M_k^(j))``,
    ``w = softmax_k(s_k)``. Defaults as torchcam's ``SSCAM``: ``samples`` N = 35, ``std`` sigma = 2.

    ``eps_jk`` is drawn from a generator seeded by ``(seed, j, k)`` (``seed=None``: a fresh seed per
    call), so a map does not depend on ``batch_size`` and every image of a batch gets the same noise
    (torchcam draws independent noise per image). Every channel runs, constant ones too (their mask is
    pure noise). Score as in `ScoreCAM` (default: the class probability; torchcam: the logit
    minus the clean input's logit, a constant that cancels in the softmax).
    """

    cost = "`samples` (35) forwards per channel of the layer (noisy masked inputs, batched)"
    zero_mask_is_zero_input = False

    def __init__(self, model: nn.Module, layer: Any = "auto", *, samples: int = 35, std: float = 2.0,
                 seed: Optional[int] = 0, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise InputError(f"std must be a finite number >= 0 (noise on masks in [0, 1]), got {std!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None (a fresh seed per call), got {seed!r}")
        self.samples, self.std, self.seed = _samples(samples), float(std), seed

    def call_state(self) -> int:
        """The noise seed of this call: ``seed``, or a fresh one when it is None."""
        return self.seed if self.seed is not None else int(torch.randint(2**31, ()).item())

    def noise(self, j: int, k: int, size: tuple[int, ...], device: torch.device, seed: int) -> torch.Tensor:
        """``eps_jk``: standard normal noise of sample ``j`` of channel ``k``, shape ``size``."""
        g = torch.Generator(device=device).manual_seed((seed * 1_000_003 + j) * 1_000_033 + k)
        return torch.randn(size, generator=g, device=device)

    def masks(self, m: torch.Tensor, k: torch.Tensor, j: torch.Tensor, state: Any) -> torch.Tensor:
        size, seed = tuple(m.shape[1:]), state
        eps = torch.stack([self.noise(int(jj), int(kk), size, m.device, seed) for jj, kk in zip(j.tolist(), k.tolist())])
        return m + self.std * eps.to(m.dtype)


@register("iscam")
class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al. 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations"):
    Score-CAM integrated over scaled masks, ``M_k^(j) = c_j norm(upsample(A_k))`` with
    ``c_j = sum_{i=1}^{j} i/N`` (j = 1..N, torchcam's ``ISCAM``), ``s_k = 1/N sum_j s(x * M_k^(j))``,
    ``w = softmax_k(s_k)``. Default ``samples`` N = 10 as torchcam. Deterministic. Score as in
    `ScoreCAM` (default: the class probability; torchcam: the logit minus the clean input's).
    """

    cost = "`samples` (10) forwards per channel of the layer (scaled masked inputs, batched)"

    def __init__(self, model: nn.Module, layer: Any = "auto", *, samples: int = 10, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        self.samples = _samples(samples)

    def coefficients(self) -> torch.Tensor:
        """``c_j`` for j = 1..N: ``j (j + 1) / (2N)``."""
        j = torch.arange(1, self.samples + 1, dtype=torch.float64)
        return j * (j + 1) / (2 * self.samples)

    def masks(self, m: torch.Tensor, k: torch.Tensor, j: torch.Tensor, state: Any) -> torch.Tensor:
        return m * self.coefficients().to(m.device, m.dtype)[j].view(-1, *([1] * (m.dim() - 1)))
