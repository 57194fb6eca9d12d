"""Deep Feature Factorization: the activations of a batch as k non-negative concepts, each a map and a label."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..core.postprocess import finalize
from ..core.precision import check_finite
from ..core.state import preserved
from ..errors import InputError, TargetError
from ..targets import TargetSpec
from .base import BaseCAM, positive_int
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


def _sweep(w: torch.Tensor, hht: torch.Tensor, xht: torch.Tensor) -> torch.Tensor:
    """One cyclic coordinate-descent pass over the columns of ``w`` (in place) for ``min |X - W H|^2``,
    ``W >= 0``, given ``H H^T`` and ``X H^T``; returns the projected-gradient violation before the pass."""
    violation = w.new_zeros(())
    for t in range(w.shape[1]):
        grad = w @ hht[:, t] - xht[:, t]
        violation = violation + torch.where(w[:, t] == 0, grad.clamp_max(0), grad).abs().sum()
        hess = hht[t, t]
        step = torch.where(hess != 0, grad / torch.where(hess != 0, hess, torch.ones_like(hess)), 0.0)
        w[:, t] = (w[:, t] - step).clamp_min(0)
    return violation


def nmf(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, max_iter: int = 200,
        tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``x`` ``(m, n) >= 0`` ~ ``W H`` from the start ``(w, h)``: scikit-learn's ``NMF(solver="cd")``
    (Cichocki & Phan 2009 hierarchical ALS; Frobenius loss, no regularisation, no shuffling), the same
    updates in the same order, and its stopping rule (violation / first violation <= ``tol``).
    Returns ``W``, ``H`` and the number of iterations."""
    w, ht = w.clone(), h.T.contiguous()
    first = 0.0
    it = 0
    for it in range(1, max_iter + 1):
        violation = _sweep(w, ht.T @ ht, x @ ht)
        violation = violation + _sweep(ht, w.T @ w, x.T @ w)
        if it == 1:
            first = float(violation)
        if first == 0 or float(violation) / first <= tol:
            break
    return w, ht.T, it


@register("dff")
class DFF(BaseCAM):
    """Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018, arXiv 1806.10206): the
    activations of all images of a call, ``X`` the ``(C, B * grid)`` matrix shifted per channel by its
    minimum (``X - min``, as pytorch-grad-cam; ReLU layers are unchanged), factorised as ``X ~ W H``
    with ``W (C, k) >= 0`` the concepts and ``H (k, B * grid) >= 0`` where each concept is
    (:func:`nmf`, scikit-learn's coordinate-descent NMF). The concepts are shared by the images of the
    call: an image's maps depend on the batch it is explained with.

    It explains no class and takes no targets (``output = "concepts"``). The :class:`Explanation`:
    ``maps`` ``(B, k, H, W)``, concept ``j``'s map per image (``H_j`` upsampled, normalised per map);
    ``raw`` ``(B, k, h, w)`` the ``H`` rows, each scaled to maximum 1 over the batch (``W`` scaled
    inversely, so ``W H`` is unchanged); ``weights`` ``(B, k, C)`` the concepts ``W_j``; ``scores``
    ``(B, k)`` how much of each concept an image holds (the mean of its ``raw`` map);
    ``concept_scores`` ``(B, k, N)`` the head's class scores of each concept's embedding
    ``min + W_j`` -- the activation where the concept is strongest -- and ``targets`` ``(B, k)`` its
    label (their argmax). ``head``: ``"auto"`` (the linear layer that maps the layer's global average to
    the logits, verified on the call as CAM's; where there is none -- the layer is not the one before
    global pooling, or the model has no class scores -- ``targets`` and ``concept_scores`` are None), None
    (no labels), or a callable mapping ``(k, C)`` embeddings to ``(k, N)`` scores.

    ``k`` concepts (1 to C); ``init`` ``"nndsvda"`` (deterministic; needs ``k`` at most the positions
    ``B * grid``), ``"random"`` with ``seed`` (pytorch-grad-cam's ``init='random', random_state=0``) or
    None (default; scikit-learn's rule: nndsvda where it applies, else random); ``max_iter``, ``tol``:
    scikit-learn's (the factorisation stops after ``max_iter`` sweeps even if the tolerance is not met;
    scikit-learn then warns, camkit does not).
    One layer; ``aug_smooth`` and ``eigen_smooth`` do not apply (concepts are found anew on each input).

    Differences from pytorch-grad-cam's ``DeepFeatureFactorization``: the default initialisation
    (pgc: random, seed 0); concept embeddings use the scale at which each concept peaks at 1 (pgc: the
    arbitrary scale NMF returns, which moves labels against the head's bias); the factorisation runs
    in torch (float64) on the input's device.
    """

    uses_gradients = False
    output = "concepts"
    cost = "one forward, no backward (a non-negative matrix factorisation of the layer's activations)"
    tasks = ()
    smoothing = ()

    def __init__(self, model: nn.Module, layer: Any = "auto", *, k: int = 5, head: Head = "auto",
                 init: Optional[str] = None, seed: int = 0, max_iter: int = 200, tol: float = 1e-4, **kw: Any) -> None:
        super().__init__(model, layer, **kw)
        positive_int("k", k, "number of concepts, at most the layer's channels")
        positive_int("max_iter", max_iter, "NMF iterations at most")
        if init not in (None, "nndsvda", "random"):
            raise InputError(f"init must be None (nndsvda where k <= positions, else random), 'nndsvda' "
                             f"(deterministic) or 'random' (with seed=), got {init!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise InputError(f"tol must be a number >= 0 (NMF stopping tolerance), got {tol!r}")
        if not (head is None or head == "auto" or callable(head)):
            raise InputError(f"head must be 'auto', None or a callable (k, C) -> (k, N), got {head!r}")
        if self.aug_smooth is not None or self.eigen_smooth:
            raise InputError("DFF finds its concepts anew on each input, so views cannot be averaged concept by "
                             "concept: aug_smooth and eigen_smooth do not apply")
        self.k, self.head, self.init, self.seed, self.max_iter, self.tol = k, head, init, seed, max_iter, float(tol)

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        """Concept maps ``(B, k, H, W)`` and labels; see the class docstring."""
        if targets is not None:
            raise TargetError("DFF explains no class: it factorises the layer's activations into k concepts "
                              "(labels in Explanation.targets); call it without targets")
        x = self._check_input(x)
        with preserved(self.model, self.eval_mode), self._forward_mode(x):
            names, modules, p, region_of = self._run(x)
            if len(names) != 1:
                raise InputError(f"DFF factorises one layer's activations; layer= names {len(names)}: {names}")
            region = region_of()
            to_grid, (a,) = self._grids(p, names, modules, x, region)
            check_finite(self.precision, a, [])
            w, raw, offset = self._factorise(a)
            embed = (offset[:, None] + w).T  # (k, C): the activation where each concept peaks
            concept_scores = self._label(a, embed, p.logits)
        b = x.shape[0]
        raw = raw.float()
        return Explanation(
            maps=finalize([raw], (x.shape[-2], x.shape[-1]), region),
            raw=raw,
            weights=w.T.float().unsqueeze(0).expand(b, -1, -1),
            scores=raw.flatten(2).mean(-1),
            targets=None if concept_scores is None else concept_scores.argmax(-1).unsqueeze(0).expand(b, -1),
            logits=None if p.logits is None else p.logits.detach(),
            layers=names,
            layout=[str(g) for g in to_grid],
            output=self.output,
            concept_scores=None if concept_scores is None else concept_scores.unsqueeze(0).expand(b, -1, -1),
        )

    def _factorise(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concepts ``W`` ``(C, k)``, their maps ``(B, k, *grid)`` (each at most 1) and the shift ``(C,)``."""
        b, c = a.shape[:2]
        x = a.detach().double().transpose(0, 1).reshape(c, -1)  # (C, B * grid)
        if self.k > c:
            raise InputError(f"k must be between 1 and {c} (the layer's channels), got k={self.k}")
        if self.init == "nndsvda" and self.k > x.shape[1]:
            raise InputError(f"k must be between 1 and {x.shape[1]} (the positions of the batch's grids) for "
                             f"init='nndsvda', got k={self.k}; use init=None or 'random'")
        init = self.init or ("nndsvda" if self.k <= x.shape[1] else "random")
        offset = x.amin(dim=1)
        x = x - offset[:, None]
        w, h, _ = nmf(x, *nmf_init(x, self.k, init, self.seed), self.max_iter, self.tol)
        peak = h.amax(dim=1)
        peak = torch.where(peak > 0, peak, torch.ones_like(peak))
        maps = (h / peak[:, None]).reshape(self.k, b, *a.shape[2:]).transpose(0, 1)
        return w * peak, maps, offset

    def _label(self, a: torch.Tensor, embed: torch.Tensor, logits: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The head's class scores ``(k, N)`` of the concept embeddings, or None without a head."""
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
        with torch.no_grad():
            out = head(embed.to(a.device, dtype))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != embed.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"head must map the ({embed.shape[0]}, C) concept embeddings to (k, N) scores, got {got}")
        return out.float()
