"""SESS (Tursun et al., ECCV 2022, "SESS: Saliency Enhancing with Scaling and Sliding", arXiv
2207.01769): a meta-method that explains square windows of the image at several scales with a base
method and fuses their maps.

Exact mode crops the windows from each rescaled image and runs the base method on every crop; fast
mode runs the network once per scale up to the explained layer and gives each window the cells of
that run under it (the base method then only runs the layers after the target per window).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import engine
from ..core.hooks import Hooks
from ..core.postprocess import normalize
from ..core.precision import score_tolerance
from ..core.state import preserved
from ..errors import InputError, TargetError
from ..targets import RowTarget, TargetSpec, Targets, resolve_targets
from .ablation.replay import Replay, Tracer
from .base import BaseCAM, chunks, positive_int
from .explanation import Explanation
from .meta import Base, MetaCAM
from .registry import register


#: a weighted window map counts in the mean at a pixel when it exceeds ``theta`` by more than this share of
#: the window's weight: pixels that are 0 in exact arithmetic (a window's minimum, upsampled) stay out
#: whatever the rounding of the resizing
ROUNDING = 1e-6


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Start offsets of windows covering ``length`` (pytorch-grad-cam's rule): every ``step``, the last
    one shifted back so that it ends at the border."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def scaled_size(h: int, w: int, short: int) -> tuple[int, int]:
    """The size with the shorter side ``short`` and the aspect kept (torchvision's ``resize(img, short)``)."""
    return (short, int(short * w / h)) if h <= w else (int(short * h / w), short)


def resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)``: linear interpolation (half-pixel centres, no antialiasing) as a matrix."""
    eye = torch.eye(n_in, device=device).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def gaussian_blur(maps: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian blur of ``(..., H, W)`` maps, border reflected without repeating the edge (OpenCV's default)."""
    r = size // 2
    g = torch.exp(-((torch.arange(size, device=maps.device, dtype=maps.dtype) - r) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    lead = maps.shape[:-2]
    m = maps.reshape(-1, 1, *maps.shape[-2:])
    mode = "reflect" if min(m.shape[-2:]) > r else "replicate"
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode=mode), g.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, r, r), mode=mode), g.view(1, 1, -1, 1))
    return m.reshape(*lead, *m.shape[-2:])


@dataclass
class _Scale:
    """One rescaled image and its windows."""

    x: torch.Tensor  # (B, C, Hs, Ws)
    starts: list[tuple[int, int]]  # window corners (y, x)
    rows: torch.Tensor  # (H, Hs) resize matrix to the input
    cols: torch.Tensor  # (W, Ws)
    acts: Optional[torch.Tensor] = None  # fast mode: the explained layer's output on x

    bands: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def band(self, start: int, window: int, axis: str) -> tuple[int, int]:
        """The output rows (``axis="rows"``) or columns a window from ``start`` reaches when resized."""
        if (axis, start) not in self.bands:
            m = (self.rows if axis == "rows" else self.cols)[:, start:start + window]
            nz = m.ne(0).any(1).nonzero().flatten()
            self.bands[axis, start] = (int(nz[0]), int(nz[-1]) + 1) if nz.numel() else (0, 0)
        return self.bands[axis, start]


@register("sess")
class SESS(MetaCAM):
    """SESS (Tursun et al., ECCV 2022): the base method explains square windows of the image rescaled to
    several sizes; window ``i``'s map ``L_i`` (min-max normalised by the base) is weighted by its
    class probability ``p_i / max_j p_j`` (pre-filtered: the ``pre_filter`` share of lowest-scoring
    windows is dropped), placed where the window lies and resized to the input, and the maps are
    fused per pixel by the mean over windows whose weighted map exceeds ``theta`` (``pool="mean"``, the
    paper's spatial weighted average; by more than float rounding, `ROUNDING`) or their maximum
    (``pool="max"``); the result is smoothed by an 11x11 Gaussian (sigma 5) and min-max normalised.

    Defaults are pytorch-grad-cam's (its ``SESS``): base Grad-CAM, ``window`` the input's shorter side,
    ``step`` = ``window``, ``num_scales=12`` scales ``window + round(window * scale_step) * i`` with
    ``scale_step=2/7`` (224, 288, ..., 928 for 224x224: 122 windows), ``pre_filter=0``, ``theta=0``,
    ``pool="mean"``, ``smooth=True``; ``scales`` (shorter sides, each >= window) overrides them.
    Window scores are the softmax probability of each target class; a target callable's score is
    used as is, clipped at 0. Windows scoring 0 weigh nothing (pytorch-grad-cam weights every window 1
    when all score 0).

    ``mode="exact"`` (default): every window is cropped from its rescaled image and explained by the
    base method, ``batch_size`` windows per pass -- the windows of all images and scales at once; maps
    equal to pytorch-grad-cam's up to float rounding, at about one forward per window (the base's
    backward runs only through the layers after the target) where pytorch-grad-cam spends about five
    (a scoring forward, then a forward and a full backward with parameter gradients).

    ``mode="fast"``: for bases whose map depends only on the explained layer and the network after it
    (declared ``from_layer``: the gradient family, CAM, EigenCAM) the network runs once per scale up to
    the layer, and each window's activations are the cells of that run under it; the base then runs
    only the layers after the target, on call-scoped replays (`camkit.methods.ablation.replay`).
    It costs one forward of every rescaled image, ``sum_s (s/window)^2`` window-forwards (91 for the
    default 12 scales) whatever the windows, so it pays where windows overlap (``step < window``); with
    the default ``step = window`` the windows tile each rescaled image (122 windows) and both modes cost
    about the same. Bound on the difference: a
    cell of the layer sees the same input pixels in both modes unless its receptive field crosses
    the window's edge (exact mode sees the padding there, fast mode the neighbouring pixels), so
    activations are equal except in a band of ``ceil(r / s)`` cells along the window's edges (``r`` the
    receptive-field radius, ``s`` the layer's stride) -- none with unpadded convolutions, where the
    modes agree to float rounding -- and everything else (crops, weights, fusion) is shared code. A
    window whose start is not a multiple of the stride reads the nearest cells (off by up to half a
    cell). On deep networks whose receptive field exceeds the window (ResNet's ``layer4``) the band is
    the whole window: fast mode is then an approximation (``benchmarks/bench_peer_parity_b.py`` prints
    its agreement with exact mode). Fast mode falls back to exact mode, with a warning, when the
    layer's output is not an ``(B, C, h, w)`` grid, several layers are explained, the model cannot run
    the rescaled image, or the network after the layer reads tensors computed before it (checked by
    replaying with those poisoned); bases that are not ``from_layer`` (Score-CAM, ...) run exact mode.
    """

    grid_dims = (2,)
    grid_note = ("SESS crops square windows of rescaled images (2-D patch extraction, Gaussian blur of 2-D maps); "
                 "windows of clips and volumes are not defined")

    def __init__(
        self,
        model: nn.Module,
        layer: Any = "auto",
        *,
        base: Base = None,
        scales: Optional[Sequence[int]] = None,
        num_scales: int = 12,
        scale_step: float = 2.0 / 7.0,
        window: Optional[int] = None,
        step: Optional[int] = None,
        pre_filter: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        batch_size: int = 32,
        mode: str = "exact",
        **options: Any,
    ) -> None:
        super().__init__(model, layer, base=base, **options)
        if scales is not None:
            if isinstance(scales, (str, bytes)) or not list(scales):
                raise InputError(f"scales must be a non-empty list of shorter-side sizes (ints >= window), got {scales!r}")
            scales = [positive_int("scales[]", s, "a rescaled image's shorter side, >= window") for s in scales]
        positive_int("num_scales", num_scales, "scales when scales= is not given")
        if isinstance(scale_step, bool) or not isinstance(scale_step, (int, float)) or not (0 <= scale_step < math.inf):
            raise InputError(f"scale_step must be a finite number >= 0 (scale increment / window), got {scale_step!r}")
        if window is not None:
            positive_int("window", window, "side of the square windows, <= the input's shorter side")
        if step is not None:
            positive_int("step", step, "stride of the sliding window in pixels")
        for name, v, hi in (("pre_filter", pre_filter, "1 (exclusive)"), ("theta", theta, "1 (exclusive)")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise InputError(f"{name} must be a number in [0, {hi}), got {v!r}")
        if pool not in ("mean", "max"):
            raise InputError(f"pool must be 'mean' (spatial weighted average) or 'max', got {pool!r}")
        if not isinstance(smooth, bool):
            raise InputError(f"smooth must be True or False, got {smooth!r}")
        positive_int("batch_size", batch_size, "windows per pass")
        if mode not in ("fast", "exact"):
            raise InputError(f"mode must be 'fast' (share the network up to the layer per scale) or 'exact', got {mode!r}")
        self.scales, self.num_scales, self.scale_step = scales, num_scales, float(scale_step)
        self.window, self.step, self.pre_filter, self.theta = window, step, float(pre_filter), float(theta)
        self.pool, self.smooth, self.batch_size, self.mode = pool, smooth, batch_size, mode

    @classmethod
    def describe_cost(cls, base: type) -> str:
        fast = "; mode='fast': one forward per rescaled image, then the layers after the target per window"
        return (f"the base ({base.cost}) on every window of every scale (12 scales: 122 windows at 224x224)"
                + (fast if base.from_layer else ""))

    @classmethod
    def is_expensive(cls, base: type) -> bool:
        return True

    # -- geometry -----------------------------------------------------------------------------------------
    def sizes(self, window: int) -> list[int]:
        """The shorter sides of the rescaled images."""
        if self.scales is not None:
            return list(self.scales)
        inc = int(round(window * self.scale_step))
        return [window + inc * i for i in range(self.num_scales)]

    def _geometry(self, x: torch.Tensor) -> tuple[int, list[_Scale]]:
        h, w = x.shape[-2:]
        window = self.window or min(h, w)
        if window > min(h, w):
            raise InputError(f"window must be between 1 and the input's shorter side {min(h, w)}, got {window}")
        step = self.step or window
        out = []
        for short in self.sizes(window):
            if short < window:
                raise InputError(f"every scale must be >= the window ({window}), got {short}; scales are shorter sides")
            hs, ws = scaled_size(h, w, short)
            xs = x if (hs, ws) == (h, w) else F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
            starts = [(a, b) for a in window_starts(hs, step, window) for b in window_starts(ws, step, window)]
            out.append(_Scale(xs, starts, resize_matrix(hs, h, x.device), resize_matrix(ws, w, x.device)))
        return window, out

    # -- the call -----------------------------------------------------------------------------------------
    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        base = self.base
        x = self._check_input(base._check_input(x))
        window, scales = self._geometry(x)
        with preserved(self.model, base.eval_mode), base._forward_mode(x):
            p = engine.forward(self.model, x, [], [], record=False)
            names, modules = base._layers(x[:1, :, :window, :window])
        t = resolve_targets(targets, p.logits, x.shape[0], p.logits_error, output=p.output)
        if isinstance(t.fn, RowTarget):
            raise TargetError("SESS explains class scores of image windows: give class targets or a score callable, "
                              "not a segmentation or detection target")
        scores = t.scores(p.output, p.logits).detach()
        k = scores.shape[1]
        source = self._source(x, scales, window, names, modules)
        weights = self._prefilter(scales, window, t, source) if (self.pre_filter > 0 or self.theta > 0) else None
        fused, layout = self._fuse(x, scales, window, t, k, source, weights)
        maps = normalize(gaussian_blur(fused) if self.smooth else fused)
        squeeze = (lambda v: v) if t.keep_k else (lambda v: v if v is None else v[:, 0])
        return Explanation(
            maps=squeeze(maps), raw=squeeze(fused), weights=None, scores=squeeze(scores), targets=squeeze(t.indices),
            logits=None if p.logits is None else p.logits.detach(), layers=names, layout=layout,
            target=t.fn if t.indices is None else None, output=self.output,
        )

    # -- window sources -----------------------------------------------------------------------------------
    def _source(self, x: torch.Tensor, scales: list[_Scale], window: int, names: list[str],
                modules: list[nn.Module]) -> "_Source":
        exact = _Source(self.base, names)
        if self.mode == "exact" or not self.base.from_layer:
            return exact
        why = None
        if len(names) != 1:
            why = f"it explains {len(names)} layers (fast mode shares one)"
        else:
            try:
                fast = _FastSource(self.base, names, modules, scales, window)
                why = fast.why_not
            except Exception as exc:  # a model that cannot run the rescaled image
                why = f"the model failed on the rescaled image ({type(exc).__name__}: {exc})"
            if why is None:
                return fast
        warnings.warn(f"SESS fast mode does not apply ({why}); running exact mode (every window through the network)",
                      RuntimeWarning, stacklevel=3)
        return exact

    def _items(self, scales: list[_Scale], batch: int) -> list[tuple[int, int, int, int]]:
        """``(scale, image, y, x)`` of every window."""
        return [(s, b, y, xx) for s, sc in enumerate(scales) for b in range(batch) for y, xx in sc.starts]

    def _chunks(self, scales: list[_Scale], batch: int) -> list[list[tuple[int, int, int, int]]]:
        """Windows in passes of ``batch_size`` (windows of every image and scale have one size)."""
        items = self._items(scales, batch)
        return [items[sl] for sl in chunks(len(items), self.batch_size)]

    # -- weights and fusion -------------------------------------------------------------------------------
    @staticmethod
    def _window_scores(t: Targets, logits: Optional[torch.Tensor], scores: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``(n, K)``: the target classes' softmax probabilities, or the callable's ``scores()`` clipped at 0."""
        if t.indices is not None:
            assert logits is not None
            return torch.softmax(logits.detach().float(), -1).gather(1, t.indices.to(logits.device))
        s = scores().detach()
        return s.reshape(s.shape[0], -1).float().clamp_min(0)

    def _prefilter(self, scales: list[_Scale], window: int, t: Targets, source: "_Source") -> torch.Tensor:
        """``(B, K, windows)`` weights ``p_i / max_kept p``: 0 for the pre-filtered windows."""
        batch = scales[0].x.shape[0]
        per = [[] for _ in range(batch)]  # type: list[list[torch.Tensor]]
        for items in self._chunks(scales, batch):
            rows = torch.tensor([b for _, b, _, _ in items], device=scales[0].x.device)
            tr = t.rows(rows)
            output, logits = source.scores(items, scales, window)
            s = self._window_scores(tr, logits, lambda: tr.scores(output, logits))
            for r, b in enumerate(rows.tolist()):
                per[b].append(s[r])
        p = torch.stack([torch.stack(v, dim=-1) for v in per])  # (B, K, n)
        drop = int(p.shape[-1] * self.pre_filter)
        keep = torch.zeros_like(p, dtype=torch.bool)
        keep.scatter_(-1, p.argsort(-1)[..., drop:], True)
        top = torch.where(keep, p, torch.zeros_like(p)).amax(-1, keepdim=True)
        return torch.where(keep, p / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(p))

    def _fuse(self, x: torch.Tensor, scales: list[_Scale], window: int, t: Targets, k: int, source: "_Source",
              weights: Optional[torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
        batch, (h, w) = x.shape[0], x.shape[-2:]
        total = x.new_zeros(batch, k, h, w, dtype=torch.float32)
        count = torch.zeros_like(total)
        seen = [0] * batch
        layout: list[str] = []
        for items in self._chunks(scales, batch):
            index = []
            for _, b, _, _ in items:
                index.append(seen[b])
                seen[b] += 1
            wt = None
            if weights is not None:  # pre-filtered: explain only the windows kept for some target
                wt = weights[[b for _, b, _, _ in items], :, index]  # (n, K)
                kept = (wt > 0).any(-1).tolist()
                items, wt = [it for it, keep in zip(items, kept) if keep], wt[(wt > 0).any(-1)]
                if not items:
                    continue
            rows = torch.tensor([b for _, b, _, _ in items], device=x.device)
            tr = t.rows(rows)
            e = source.explain(items, scales, window, tr)
            layout = e.layout
            cams = e.maps if e.maps.dim() == 4 else e.maps.unsqueeze(1)  # (n, K, window, window)
            if wt is None:  # p_i; the 1 / max p of the weights is a constant the final normalisation removes
                wt = self._window_scores(tr, e.logits, lambda: e.scores)
            weighted = cams.float() * wt.view(*wt.shape, 1, 1)
            for (s, b, y, c), cam, w_i in zip(items, weighted, wt):
                # the window placed on its rescaled image and resized to the input: R_y[:, y:y+window] cam
                # R_x[:, c:c+window]^T, computed on the rows and columns where those blocks are not zero
                (r0, r1), (c0, c1) = scales[s].band(y, window, "rows"), scales[s].band(c, window, "cols")
                placed = scales[s].rows[r0:r1, y:y + window] @ cam @ scales[s].cols[c0:c1, c:c + window].T
                out = total[b, :, r0:r1, c0:c1]
                if self.pool == "max":
                    torch.maximum(out, placed, out=out)
                else:
                    above = placed > self.theta + ROUNDING * w_i.view(-1, 1, 1)  # exact zeros stay out of the count
                    out += torch.where(above, placed, torch.zeros_like(placed))
                    count[b, :, r0:r1, c0:c1] += above
        if self.pool == "max":
            return total, layout
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)), layout


class _Source:
    """Exact mode: windows cropped from the rescaled images, explained by the base method."""

    def __init__(self, base: BaseCAM, names: list[str]) -> None:
        self.base, self.names = base, names

    def crops(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int) -> torch.Tensor:
        return torch.stack([scales[s].x[b, :, y:y + window, c:c + window] for s, b, y, c in items])

    def method(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int) -> BaseCAM:
        m = copy.copy(self.base)
        m.layer = self.names
        return m

    def explain(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int, t: Targets) -> Explanation:
        xw = self.crops(items, scales, window)
        spec = t.indices if t.indices is not None else t.fn
        return self.method(items, scales, window).explain(xw, spec)

    def scores(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int) -> tuple[Any, Optional[torch.Tensor]]:
        """The model output and logits of the windows (no gradients)."""
        xw = self.crops(items, scales, window)
        with preserved(self.base.model, self.base.eval_mode), torch.no_grad(), self.base._forward_mode(xw):
            out = self.base.model(xw)
        return out, engine.read_logits(out, xw.shape[0])[0]


class _FastSource(_Source):
    """Fast mode: the layer's output on each rescaled image, cropped per window, and the network after
    the layer replayed on the crops (`camkit.methods.ablation.replay.Plan`)."""

    def __init__(self, base: BaseCAM, names: list[str], modules: list[nn.Module], scales: list[_Scale],
                 window: int) -> None:
        super().__init__(base, names)
        self.why_not: Optional[str] = None
        model = base.model
        first = scales[0].x[:1, :, :window, :window]
        tracer = Tracer(modules)
        with preserved(model, base.eval_mode), base._forward_mode(first):
            with Hooks() as hooks:
                tracer.attach(hooks, model)
                p0 = engine.forward(model, first, modules, names, record=False)
            layout = base._read(p0.acts[0], names[0], modules[0], first)
            if layout.kind != "nchw":
                self.why_not = f"layer {names[0]!r} is read as {layout}, not a (B, C, h, w) grid"
                return
            self.plan = tracer.plan(0, names[0], tail=True)
            check = self.plan.poisoned().run(model, first, Replay(0, 1, 1, p0.acts[0]))
            logits, _ = engine.read_logits(check, 1)
            tol = score_tolerance(base.precision)
            if logits is None or p0.logits is None or not torch.allclose(logits, p0.logits, rtol=tol, atol=tol):
                self.why_not = f"the network after layer {names[0]!r} reads tensors computed before it"
                return
            self.grid = tuple(p0.acts[0].shape[-2:])
            for sc in scales:
                sc.acts = engine.forward(model, sc.x, modules, names, record=False).acts[0].detach()

    def cells(self, sc: _Scale, y: int, c: int, window: int) -> torch.Tensor:
        """The crop of the scale's activations under the window at ``(y, c)``: offsets mapped linearly from
        ``[0, Hs - window]`` onto ``[0, hs - h]`` (``y / stride`` for windows aligned to the stride)."""
        assert sc.acts is not None
        (gh, gw), (hs, ws) = self.grid, sc.acts.shape[-2:]
        big_h, big_w = sc.x.shape[-2:]
        r0 = 0 if big_h == window else round(y * (hs - gh) / (big_h - window))
        c0 = 0 if big_w == window else round(c * (ws - gw) / (big_w - window))
        r0, c0 = min(max(r0, 0), hs - gh), min(max(c0, 0), ws - gw)
        return sc.acts[..., r0:r0 + gh, c0:c0 + gw]

    def _acts(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int) -> torch.Tensor:
        return torch.stack([self.cells(scales[s], y, c, window)[b] for s, b, y, c in items])

    def method(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int) -> BaseCAM:
        m = super().method(items, scales, window)
        acts = self._acts(items, scales, window)
        plan, record = self.plan, self.base.uses_gradients

        def replay(x: torch.Tensor, modules: list[nn.Module], names: list[str]) -> engine.Pass:
            leaf = acts.detach().requires_grad_(record)
            out = plan.run(m.model, x, Replay(0, 1, x.shape[0], leaf), record=record)
            logits, why = engine.read_logits(out, x.shape[0])
            return engine.Pass(out, logits, [leaf], list(names), why)

        m._forward = replay  # type: ignore[method-assign]
        return m

    def scores(self, items: list[tuple[int, int, int, int]], scales: list[_Scale], window: int) -> tuple[Any, Optional[torch.Tensor]]:
        xw = self.crops(items, scales, window)
        acts = self._acts(items, scales, window)
        with preserved(self.base.model, self.base.eval_mode), self.base._forward_mode(xw):
            out = self.plan.run(self.base.model, xw, Replay(0, 1, xw.shape[0], acts))
        return out, engine.read_logits(out, xw.shape[0])[0]
