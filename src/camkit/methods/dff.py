"""Deep Feature Factorization: an image's (or a batch's) activations as k non-negative concepts, each a map and a label."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..core.postprocess import finalize
from ..core.precision import check_finite
from ..core.state import preserved
from ..errors import InputError, TargetError
from ..targets import TargetSpec
from .base import BaseCAM, positive_int, size_hint
from .explanation import Explanation
from .gradient import gap_linear_head
from .registry import register

Head = Union[str, None, Callable[[torch.Tensor], torch.Tensor]]


def nmf_init(x: torch.Tensor, k: int, init: str = "nndsvda", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's NMF initialisations of ``W`` ``(m, k)`` and ``H`` ``(k, n)`` for ``x`` ``(m, n)``.

    ``"nndsvda"`` (Boutsidis & Gallopoulos 2008): the positive or negative parts of the first ``k``
    singular pairs, zeros replaced by ``mean(x)`` -- deterministic (scikit-learn's randomized SVD is
    exact at these ranks; here a full SVD). ``"random"``: ``|N(0, 1)| * sqrt(mean(x) / k)`` drawn from
    ``numpy.random.RandomState(seed)``, ``H`` first, exactly as scikit-learn (and pytorch-grad-cam's
    ``init='random', random_state=0``) draw them.
    """
    m, n = x.shape
    if init == "random":
        avg = math.sqrt(float(x.mean()) / k)
        rng = np.random.RandomState(seed)
        h = np.abs(avg * rng.standard_normal(size=(k, n)))
        w = np.abs(avg * rng.standard_normal(size=(m, k)))
        return torch.from_numpy(w).to(x), torch.from_numpy(h).to(x)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    u, s, v = u[:, :k], s[:k], vh[:k]
    xp, xn, yp, yn = u.clamp_min(0), (-u).clamp_min(0), v.clamp_min(0), (-v).clamp_min(0)
    xpn, xnn, ypn, ynn = xp.norm(dim=0), xn.norm(dim=0), yp.norm(dim=1), yn.norm(dim=1)
    pos = xpn * ypn > xnn * ynn  # per component: keep the positive or the negative parts
    safe = lambda t: torch.where(t > 0, t, torch.ones_like(t))  # noqa: E731
    uu = torch.where(pos, xp / safe(xpn), xn / safe(xnn))
    vv = torch.where(pos[:, None], yp / safe(ypn)[:, None], yn / safe(ynn)[:, None])
    lbd = torch.sqrt(s * torch.where(pos, xpn * ypn, xnn * ynn))
    w, h = uu * lbd, vv * lbd[:, None]
    w[:, 0], h[0] = s[0].sqrt() * u[:, 0].abs(), s[0].sqrt() * v[0].abs()  # the leading pair is non-negative
    w, h = torch.where(w < 1e-6, 0.0, w), torch.where(h < 1e-6, 0.0, h)
    avg = x.mean()
    return torch.where(w == 0, avg, w), torch.where(h == 0, avg, h)


def _sweep(rows: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One cyclic coordinate-descent pass (in place) over the ``k`` rows of ``rows`` = ``W^T`` ``(N, k, m)``
    for ``min |X - W H|^2``, ``W >= 0``, given ``gram = H H^T`` ``(N, k, k)`` and ``cross = H X^T``
    ``(N, k, m)``, for the ``N`` problems where ``active`` ``(N,)``; returns each problem's
    projected-gradient violation before the pass. (Rows, not columns: contiguous, and torch's matrix
    products of that shape are several times faster on the CPU.)"""
    hess = gram.diagonal(dim1=1, dim2=2)  # (N, k)
    steps = torch.where(hess != 0, 1 / torch.where(hess != 0, hess, torch.ones_like(hess)), 0.0)  # 0: no step
    steps = (steps * active[:, None]).T.unsqueeze(-1)  # (k, N, 1); a converged problem takes none
    before = rows.clone()  # a row changes only at its own step: its value when its gradient is taken
    grads = rows.new_empty(rows.shape[1], rows.shape[0], 1, rows.shape[2])  # (k, N, 1, m)
    for t, (grad, step) in enumerate(zip(grads, steps)):
        # (W H H^T - X H^T)^T[t], the rows before t already updated
        torch.baddbmm(cross[:, t:t + 1], gram[:, t:t + 1], rows, beta=-1, out=grad)
        rows[:, t].sub_(grad[:, 0] * step).clamp_min_(0)
    g = grads[:, :, 0].transpose(0, 1)  # (N, k, m)
    return torch.where(before == 0, g.clamp_max(0), g).abs().sum(dim=(1, 2))


def nmf(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, max_iter: int = 200,
        tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``x`` ``(m, n) >= 0`` ~ ``W H`` from the start ``(w, h)`` -- or ``N`` such problems at once,
    ``(N, m, n)`` -- by scikit-learn's ``NMF(solver="cd")`` (Cichocki & Phan 2009 hierarchical ALS;
    Frobenius loss, no regularisation, no shuffling): the same updates in the same order, and its
    stopping rule per problem (violation / first violation <= ``tol``; a problem that has stopped is
    left as it is while the others go on). Returns ``W``, ``H`` and the number of iterations of the
    slowest problem; ``w`` and ``h`` are left as they were."""
    one = x.dim() == 2
    if one:
        x, w, h = x[None], w[None], h[None]
    wt = w.transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (N, k, m)
    h = h.clone(memory_format=torch.contiguous_format)  # (N, k, n)
    x, xt = x.contiguous(), x.transpose(1, 2).contiguous()
    active = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    first = None
    it = 0
    for it in range(1, max_iter + 1):
        violation = _sweep(wt, h @ h.transpose(1, 2), h @ xt, active)
        violation = violation + _sweep(h, wt @ wt.transpose(1, 2), wt @ x, active)
        if first is None:
            first = violation
        done = (first == 0) | (violation <= tol * first)
        active = active * ~done
        if not bool(active.any()):
            break
    w, h = wt.transpose(1, 2), h
    return (w[0], h[0], it) if one else (w, h, it)


def _nmf_sklearn(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, max_iter: int,
                 tol: float) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The same factorisation as `nmf` by scikit-learn's compiled solver itself, one problem at a
    time (on a CPU its Cython loop beats the torch ops' per-call cost several times); None when
    scikit-learn is not installed (then `nmf` runs)."""
    try:
        from sklearn.decomposition import non_negative_factorization
    except ImportError:
        return None
    ws, hs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the same stop as nmf's
        for xi, wi, hi in zip(x.numpy(), w.numpy(), h.numpy()):
            wo, ho, _ = non_negative_factorization(xi, W=wi.copy(), H=hi.copy(), n_components=wi.shape[1],
                                                   init="custom", solver="cd", tol=tol, max_iter=max_iter)
            ws.append(torch.from_numpy(wo))
            hs.append(torch.from_numpy(ho))
    return torch.stack(ws), torch.stack(hs)


@register("dff")
class DFF(BaseCAM):
    """Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018, arXiv 1806.10206): an
    image's activations, ``X`` the ``(C, grid)`` matrix shifted per channel by its minimum (``X - min``,
    as pytorch-grad-cam; ReLU layers are unchanged), factorised as ``X ~ W H`` with ``W (C, k) >= 0``
    the concepts and ``H (k, grid) >= 0`` where each concept is (`nmf`, scikit-learn's
    coordinate-descent NMF). ``joint=True`` factorises the images of a call together, ``X (C, B * grid)``
    (the paper's concepts shared by a set of images, and pytorch-grad-cam's): an image's maps then
    depend on the batch; by default each image gets its own ``k`` concepts, whatever its batch.

    It explains no class and takes no targets (``output = "concepts"``). The `Explanation`:
    ``maps`` ``(B, k, H, W)``, concept ``j``'s map per image (``H_j`` upsampled, normalised per map);
    ``raw`` ``(B, k, h, w)`` the ``H`` rows, each scaled to maximum 1 (``W`` scaled inversely, so
    ``W H`` is unchanged); ``weights`` ``(B, k, C)`` the concepts ``W_j``; ``scores`` ``(B, k)`` how
    much of each concept an image holds (the mean of its ``raw`` map); ``concept_scores``
    ``(B, k, N)`` the head's class scores of each concept's embedding ``min + W_j`` -- the activation
    where the concept is strongest -- and ``targets`` ``(B, k)`` its label (their argmax). ``head``:
    ``"auto"`` (the linear layer that maps the layer's global average to the logits, verified on the
    call as CAM's; where there is none -- the layer is not the one before global pooling, or the model
    has no class scores -- ``targets`` and ``concept_scores`` are None), None (no labels), or a
    callable mapping ``(n, C)`` embeddings to ``(n, N)`` scores.

    ``k`` concepts (1 to C); ``init`` ``"nndsvda"`` (deterministic; needs ``k`` at most the factorised
    positions), ``"random"`` with ``seed`` (pytorch-grad-cam's ``init='random', random_state=0``) or
    None (default; scikit-learn's rule: nndsvda where it applies, else random); ``max_iter``, ``tol``:
    scikit-learn's (the factorisation stops after ``max_iter`` sweeps even if the tolerance is not met;
    scikit-learn then warns, camkit does not). One layer; ``aug_smooth`` and ``eigen_smooth`` do not
    apply (concepts are found anew on each input, so views cannot be matched concept by concept).

    Differences from pytorch-grad-cam's ``DeepFeatureFactorization``: per image by default (pgc: the
    batch jointly, ``joint=True``); the default initialisation (pgc: random, seed 0); concept
    embeddings at the scale where each concept peaks at 1 (pgc: the arbitrary scale NMF returns, which
    moves labels against the head's bias); the factorisation runs in torch (float64) on the input's device.
    """

    uses_gradients = False
    output = "concepts"
    cost = "one forward, no backward (a non-negative matrix factorisation of the layer's activations)"
    tasks = ()
    smoothing = ()

    def __init__(self, model: nn.Module, layer: Any = "auto", *, k: int = 5, joint: bool = False,
                 head: Head = "auto", init: Optional[str] = None, seed: int = 0, max_iter: int = 200,
                 tol: float = 1e-4, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        positive_int("k", k, "number of concepts, at most the layer's channels")
        positive_int("max_iter", max_iter, "NMF iterations at most")
        if not isinstance(joint, bool):
            raise InputError(f"joint must be True (one factorisation of the batch) or False (per image), got {joint!r}")
        if init not in (None, "nndsvda", "random"):
            raise InputError(f"init must be None (nndsvda where k <= positions, else random), 'nndsvda' "
                             f"(deterministic) or 'random' (with seed=), got {init!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
            raise InputError(f"seed must be an int in [0, 2**32) (numpy's RandomState, init='random'), got {seed!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise InputError(f"tol must be a number >= 0 (NMF stopping tolerance), got {tol!r}")
        if not (head is None or head == "auto" or callable(head)):
            raise InputError(f"head must be 'auto', None or a callable (n, C) -> (n, N), got {head!r}")
        if self.aug_smooth is not None or self.eigen_smooth:
            raise InputError("DFF finds its concepts anew on each input, so views cannot be averaged concept by "
                             "concept: aug_smooth and eigen_smooth do not apply")
        self.k, self.joint, self.head, self.init, self.seed = k, joint, head, init, seed
        self.max_iter, self.tol = max_iter, float(tol)

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        """Concept maps ``(B, k, H, W)`` and labels; see the class docstring."""
        if targets is not None:
            raise TargetError("DFF explains no class: it factorises the layer's activations into k concepts "
                              "(labels in Explanation.targets); call it without targets")
        x = self._check_input(x)
        with preserved(self.model, self.eval_mode), self._forward_mode(x), size_hint(self.model, x):
            names, modules, p, region_of = self._run(x)
            if len(names) != 1:
                raise InputError(f"DFF factorises one layer's activations; layer= names {len(names)}: {names}")
            region = region_of()
            to_grid, (a,) = self._grids(p, names, modules, x, region)
            check_finite(self.precision, a, [])
            w, raw, offset = self._factorise(a)  # (B, k, C), (B, k, *grid), (B, C)
            concept_scores = self._label(a, offset[:, None, :] + w, p.logits)  # at each concept's peak
        raw = raw.float()
        return Explanation(
            maps=finalize([raw], tuple(x.shape[2:]), region),
            raw=raw,
            weights=w.float(),
            scores=raw.flatten(2).mean(-1),
            targets=None if concept_scores is None else concept_scores.argmax(-1),
            logits=None if p.logits is None else p.logits.detach(),
            layers=names,
            layout=[str(g) for g in to_grid],
            output=self.output,
            concept_scores=concept_scores,
            categories=self._categories(),
        )

    def _factorise(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concepts ``(B, k, C)``, their maps ``(B, k, *grid)`` (each at most 1) and the shifts ``(B, C)``."""
        b, c = a.shape[:2]
        x = a.detach().double().reshape(b, c, -1)  # one (C, grid) matrix per image
        if self.joint:  # one (C, B * grid) matrix
            x = x.transpose(0, 1).reshape(1, c, -1)
        n = x.shape[2]
        if self.k > c:
            raise InputError(f"k must be between 1 and {c} (the layer's channels), got k={self.k}")
        if self.init == "nndsvda" and self.k > n:
            raise InputError(f"k must be between 1 and {n} (the factorised positions) for init='nndsvda', got "
                             f"k={self.k}; use init=None or 'random'")
        init = self.init or ("nndsvda" if self.k <= n else "random")
        offset = x.amin(dim=2)
        x = x - offset[..., None]
        starts = [nmf_init(xi, self.k, init, self.seed) for xi in x]
        w0, h0 = torch.stack([s for s, _ in starts]), torch.stack([s for _, s in starts])
        solved = _nmf_sklearn(x, w0, h0, self.max_iter, self.tol) if x.device.type == "cpu" else None
        w, h = solved if solved is not None else nmf(x, w0, h0, self.max_iter, self.tol)[:2]
        peak = h.amax(dim=2, keepdim=True)  # (N, k, 1)
        peak = torch.where(peak > 0, peak, torch.ones_like(peak))
        w, h = (w * peak.transpose(1, 2)).transpose(1, 2), h / peak  # (N, k, C), (N, k, n)
        if self.joint:
            return w.expand(b, -1, -1), h[0].reshape(self.k, b, *a.shape[2:]).transpose(0, 1), offset.expand(b, -1)
        return w, h.reshape(b, self.k, *a.shape[2:]), offset

    def _label(self, a: torch.Tensor, embed: torch.Tensor, logits: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The head's class scores ``(B, k, N)`` of the concept embeddings ``(B, k, C)``, or None without a head."""
        head = self.head
        if head == "auto":
            if logits is None or logits.dim() != 2:
                return None  # no class scores to label concepts with (segmentation, detection)
            head = gap_linear_head(self.model, a, logits.float(), self.precision)
            if head is None:
                return None  # the layer is not the one before global average pooling + linear: no labels
        if head is None:
            return None
        dtype = next((t.dtype for t in head.parameters()), torch.float32) if isinstance(head, nn.Module) else torch.float32
        flat = embed.reshape(-1, embed.shape[-1])
        with torch.no_grad():
            out = head(flat.to(a.device, dtype))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != flat.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"head must map ({flat.shape[0]}, C) concept embeddings to (n, N) scores, got {got}")
        return out.float().reshape(*embed.shape[:2], -1)
