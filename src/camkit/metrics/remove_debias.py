"""ROAD (Remove And Debias, Rong et al. 2022): faithfulness without the removal artefacts.

Deletion-style metrics replace pixels by a constant; the model then sees the *shape* of the removed
region, and scores drop because of that shape, not because of the information removed. ROAD replaces
each removed pixel by the mean of its 8 neighbours (noisy linear imputation), so that the removed
region carries no shape cue:

    x_i = Σ_j w_ij v_j / Σ_j w_ij + ε_i,    j ∈ the in-image 8 neighbours of i,
    v_j = x_j when j is removed too, else the image value;  w = 1/6 (edge), 1/12 (diagonal);
    ε_i ~ N(0, noise²) per channel (the authors' code: noise = 0.01, added after the solve)

Clips and volumes ``(B, C, D, H, W)``: the same rule over the 26 neighbours of a voxel, each weighted
``1 / |offset|²`` and normalised (edge 1, face diagonal 1/2, corner 1/3, over 44/3) -- the rule that
gives the authors' 2-D weights (1 and 1/2 over 6 = 1/6 and 1/12); percentiles count voxels; the
systems are solved by conjugate gradients (an LU of a 3-D system fills in too much).

— one sparse linear system per (image, removal mask), the same matrix for every channel: it is
built vectorised for a whole batch of masks (a block-diagonal matrix), factorised once (SuperLU)
and solved for all channels of all images in one call. Every system is non-singular while a pixel
is kept (each connected removed region touches a kept pixel; the matrix is then an irreducibly
diagonally dominant M-matrix).

Curves: MoRF removes the p % pixels of highest map value, LeRF the p % of lowest value, at each
percentile p of ``percentiles`` (default the paper's 10, 20, ..., 90); ties in a random order fixed
by ``seed`` (a uniform map = random removal). ROAD combined, per image:

    combined = mean_p (LeRF_p − MoRF_p) / 2      (pytorch-grad-cam's ``ROADCombined``; higher is better)

— a faithful map's most relevant pixels matter (MoRF falls) and its least relevant ones do not
(LeRF stays). With ``score="softmax"`` it lies in [−0.5, 0.5].
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import cg, splu
from torch import nn

from ..errors import InputError
from ._checks import as_map_batch, match_maps_to_images
from ._forward import (
    Normalize,
    Score,
    Space,
    TargetsLike,
    check_choice,
    check_images,
    class_indices,
    evaluating,
    logits_of,
    model_input,
    select_scores,
)
from .faithfulness import _pixel_ranks
from .protocol import Protocol, callable_name

__all__ = ["ROAD_PERCENTILES", "ROADProtocol", "ROADResult", "noisy_linear_imputation", "road", "check_percentiles"]

ROAD_PERCENTILES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)  # (dy, dx, weight): the authors' weights


@functools.lru_cache(maxsize=2)
def stencil(spatial_dims: int) -> tuple[tuple[tuple[int, ...], float], ...]:
    """Every neighbour offset of a grid cell with weight ``1 / |offset|²``, normalised to sum 1 (2-D: the
    authors' 1/6 edge, 1/12 diagonal, as `NEIGHBOURS`; 3-D: 26 neighbours)."""
    import itertools

    offsets = [o for o in itertools.product((-1, 0, 1), repeat=spatial_dims) if any(o)]
    raw = [1.0 / sum(v * v for v in o) for o in offsets]
    return tuple((o, r / sum(raw)) for o, r in zip(offsets, raw))
_LU_CELLS_3D = 16_384  # 3-D grids up to this many cells are factorised (a clip of 8 x 32 x 32), larger ones iterate
_MAX_UNKNOWNS = 400_000  # removed pixels per factorisation (bounds SuperLU's memory)


@dataclass(frozen=True)
class ROADProtocol(Protocol):
    """Conventions of ROAD."""

    NAME: ClassVar[str] = "ROAD"
    REFERENCE: ClassVar[str] = "Rong et al. 2022, A Consistent and Efficient Evaluation Strategy for Attribution Methods (ICML)"
    percentiles: tuple[float, ...] = ROAD_PERCENTILES
    imputation: str = "noisy linear: mean of the 8 neighbours (1/6 edge, 1/12 diagonal), solved jointly"
    noise: float = 0.01
    score: str = "softmax"
    space: str = "pixel"
    normalize: str = "none"
    order: str = "map value; MoRF highest first, LeRF lowest first; ties in a random order fixed by seed"
    seed: int = 0
    combined: str = "mean over percentiles of (LeRF - MoRF) / 2, per image; higher is better"


@dataclass(frozen=True)
class ROADResult:
    """Scores of the explained class after removing p % of the pixels (MoRF: most relevant first;
    LeRF: least relevant first), per image and percentile, and the score on the intact image."""

    morf: torch.Tensor  # (B, P)
    lerf: torch.Tensor  # (B, P)
    base: torch.Tensor  # (B,)
    percentiles: tuple[float, ...]
    targets: torch.Tensor  # (B,)
    protocol: ROADProtocol

    @property
    def combined(self) -> torch.Tensor:
        """(B,) ``mean_p (LeRF_p − MoRF_p) / 2``."""
        return ((self.lerf - self.morf) / 2).mean(1)

    @property
    def mean_combined(self) -> float:
        return float(self.combined.mean())


def check_percentiles(percentiles: Sequence[float], name: str = "percentiles") -> tuple[float, ...]:
    """The percentiles as floats; InputError unless a non-empty list of numbers in the open (0, 100)."""
    try:
        values = tuple(float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of numbers in (0, 100) (percent of pixels removed), "
                         f"got {percentiles!r}") from None
    bad = [p for p in values if not 0 < p < 100]
    if not values or bad:
        raise InputError(f"{name} must be numbers in the open range (0, 100) (percent of pixels removed), "
                         f"got {list(values) or 'an empty list'}" + (f"; out of range: {bad}" if bad else ""))
    return values


@functools.lru_cache(maxsize=8)
def nested_dissection(h: int, w: int, leaf: int = 8) -> np.ndarray:
    """(h·w,) rank of each pixel of an h × w grid in a nested-dissection order: split the longer side at
    its middle line, order the two halves (recursively) and then the line, down to ``leaf`` × ``leaf``
    blocks. A line of pixels separates the halves for the 8-neighbour stencil, so the order restricted to
    any removal mask is a nested dissection of its system too; SuperLU factorises in it about 2x faster
    than in its own minimum-degree order (224²: 3.0 s against 6.0 s for 16 masks, 2-core CPU)."""
    order: list[np.ndarray] = []

    def split(y0: int, y1: int, x0: int, x1: int) -> None:
        if y1 <= y0 or x1 <= x0:
            return
        if (y1 - y0) * (x1 - x0) <= leaf * leaf:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            order.append((yy * w + xx).ravel())
        elif y1 - y0 >= x1 - x0:
            m = (y0 + y1) // 2
            split(y0, m, x0, x1)
            split(m + 1, y1, x0, x1)
            order.append(m * w + np.arange(x0, x1))
        else:
            m = (x0 + x1) // 2
            split(y0, y1, x0, m)
            split(y0, y1, m + 1, x1)
            order.append(np.arange(y0, y1) * w + m)

    split(0, h, 0, w)
    rank = np.empty(h * w, dtype=np.int64)
    rank[np.concatenate(order)] = np.arange(h * w)
    return rank


def _system(removed: np.ndarray) -> tuple[csc_matrix, np.ndarray, list[tuple[np.ndarray, np.ndarray, float]]]:
    """The imputation matrix of a batch of masks ``removed`` (B, *grid) bool, grid (H, W) or (D, H, W):
    unknowns = removed cells, mask by mask; in 2-D in nested-dissection order within each mask
    (`nested_dissection`). Returns (A, flat indices of the unknowns, per neighbour direction:
    (rows of unknowns with a kept neighbour there, those neighbours' flat indices, weight))."""
    grid = removed.shape[1:]
    cells = int(np.prod(grid))
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    mask_of, pixel = np.divmod(unknown, cells)
    within = nested_dissection(*grid)[pixel] if len(grid) == 2 else pixel
    unknown = unknown[np.argsort(mask_of * cells + within, kind="stable")]
    vidx = np.full(flat.size, -1, dtype=np.int64)
    vidx[unknown] = np.arange(unknown.size)
    bi, rem = np.divmod(unknown, cells)
    coords = np.unravel_index(rem, grid)
    diag = np.zeros(unknown.size)
    rows, cols, vals, known = [], [], [], []
    for offset, weight in stencil(len(grid)):
        moved = [c + o for c, o in zip(coords, offset)]
        inside = np.logical_and.reduce([(m >= 0) & (m < n) for m, n in zip(moved, grid)])
        src = np.flatnonzero(inside)
        nbr = bi[src] * cells + np.ravel_multi_index(tuple(m[src] for m in moved), grid)
        diag[src] += weight
        var = vidx[nbr]
        off = var >= 0
        rows.append(src[off])
        cols.append(var[off])
        vals.append(np.full(int(off.sum()), -weight))
        known.append((src[~off], nbr[~off], weight))
    n = unknown.size
    r = np.concatenate(rows + [np.arange(n)])
    c = np.concatenate(cols + [np.arange(n)])
    v = np.concatenate(vals + [diag])
    return csc_matrix((v, (r, c)), shape=(n, n)), unknown, known


def _solve(a: csc_matrix, rhs: np.ndarray, spatial_dims: int, cells: int) -> np.ndarray:
    """``A⁻¹ rhs`` for every column; ``cells`` per mask. 2-D (and 3-D grids up to :data:`_LU_CELLS_3D` cells):
    SuperLU (2-D in the nested-dissection order). Larger 3-D grids: conjugate gradients
    with a Jacobi preconditioner (A is symmetric positive definite: symmetric weights, strictly dominant
    diagonal where a neighbour is kept), to a relative residual of 1e-12 -- an LU of a 26-neighbour
    system fills in far more (a 32³ volume: minutes per mask instead of a fraction of a second)."""
    if spatial_dims == 2 or cells <= _LU_CELLS_3D:
        return splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True}).solve(rhs)
    a = a.tocsr()
    inv = 1.0 / a.diagonal()
    out = np.empty_like(rhs)
    for k in range(rhs.shape[1]):
        x, info = cg(a, rhs[:, k], x0=rhs[:, k] * inv, rtol=1e-12, atol=0.0, maxiter=10 * a.shape[0],
                     M=_jacobi(inv))
        if info != 0:
            raise InputError(f"ROAD's imputation did not converge (conjugate gradients, status {info})")
        out[:, k] = x
    return out


def _jacobi(inv: np.ndarray) -> Any:
    from scipy.sparse import diags

    return diags(inv)


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``images`` (B, C, H, W) with the pixels where ``removed`` (B, H, W) is True replaced by the noisy
    linear imputation of the module docstring (float64 solve; the result in the images' dtype); clips and
    volumes: ``images`` (B, C, D, H, W), ``removed`` (B, D, H, W).

    One factorisation per mask (a batch of masks is one block-diagonal matrix, split into chunks of at
    most ~400k removed pixels), solved for all C channels at once; ``noise`` is the standard
    deviation of the Gaussian noise added to the imputed values (0: none), drawn from ``generator``.
    """
    images = check_images(images)
    if not isinstance(removed, torch.Tensor) or removed.shape != (images.shape[0], *images.shape[2:]):
        got = tuple(removed.shape) if isinstance(removed, torch.Tensor) else type(removed).__name__
        grid = "(B, H, W)" if images.ndim == 4 else "(B, D, H, W)"
        raise InputError(f"removed must be a {grid} bool tensor matching images {tuple(images.shape)}, got {got}")
    if noise < 0:
        raise InputError(f"noise must be >= 0 (standard deviation of the imputation noise), got {noise}")
    rem = removed.detach().cpu().bool().numpy()
    full = rem.reshape(rem.shape[0], -1).all(1)
    if full.any():
        raise InputError(f"image(s) {np.flatnonzero(full).tolist()[:10]} have every pixel removed; "
                         "imputation needs at least one kept pixel")
    b, c = images.shape[:2]
    grid = tuple(images.shape[2:])
    cells = int(np.prod(grid))
    src = images.detach().cpu().double().movedim(1, -1).reshape(-1, c).numpy()  # (B·cells, C)
    out = src.copy()
    counts = rem.reshape(b, -1).sum(1)
    start = 0
    while start < b:  # chunks of images, bounded in unknowns
        stop, total = start + 1, int(counts[start])
        while stop < b and total + counts[stop] <= _MAX_UNKNOWNS:
            total += int(counts[stop])
            stop += 1
        if total:
            a, unknown, known = _system(rem[start:stop])
            offset = start * cells
            rhs = np.zeros((unknown.size, c))
            for rows, nbr, weight in known:
                rhs[rows] += weight * src[nbr + offset]  # one neighbour per direction: rows unique
            solved = _solve(a, rhs, len(grid), cells)
            out[unknown + offset] = solved
        start = stop
    result = torch.from_numpy(out).view(b, *grid, c).movedim(-1, 1)
    if noise > 0:
        eps = torch.randn(result.shape, generator=generator, dtype=torch.float64)
        result = torch.where(torch.from_numpy(rem)[:, None], result + noise * eps, result)
    return result.to(device=images.device, dtype=images.dtype).contiguous()


def road(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetsLike = None,
    *,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    noise: float = 0.01,
    score: Score = "softmax",
    space: Space = "pixel",
    normalize: Normalize = None,
    batch_size: int = 64,
    seed: int = 0,
) -> ROADResult:
    """MoRF and LeRF scores at each percentile (percent of pixels removed) and ROAD combined.

    ``images`` (B, C, H, W) pixels, or clips / volumes (B, C, D, H, W) with maps (B, D, H, W) (``space="pixel"``: imputed in pixel space, the model sees
    ``normalize(imputed)``; ``"tensor"``: imputed in ``normalize(images)``); ``maps`` (B, h, w),
    bilinearly brought to the image size; ``targets``: None = the model's top-1. ``seed`` fixes the tie
    order and the imputation noise. See the module docstring.
    """
    pcts = check_percentiles(percentiles)
    check_choice("space", space, ("pixel", "tensor"))
    check_choice("score", score, ("softmax", "logit"))
    images = check_images(images)
    m, _ = as_map_batch(maps, "maps", images.ndim - 2)
    m = match_maps_to_images(m, images)
    b, grid = images.shape[0], tuple(images.shape[2:])
    n = int(np.prod(grid))
    ranks = _pixel_ranks(m, seed).view(b, *grid).cpu()
    ks = [int(round(p / 100 * n)) for p in pcts]
    masks = [ranks < k for k in ks] + [ranks >= n - k for k in ks]  # MoRF, then LeRF; each (B, H, W)
    gen = torch.Generator().manual_seed(seed)
    with evaluating(model):
        base = images if space == "pixel" else model_input(images, normalize)
        logits = logits_of(model, model_input(images, normalize), batch_size)
        t = class_indices(targets, b, logits, images.device)
        y = select_scores(logits, t, score)
        removed = torch.cat(masks)  # (2P·B, H, W), mask-major
        reps = base.repeat(len(masks), *([1] * (base.ndim - 1)))
        imputed = noisy_linear_imputation(reps, removed, noise, gen)
        x = model_input(imputed, normalize) if space == "pixel" else imputed
        scores = select_scores(logits_of(model, x, batch_size), t.repeat(len(masks)), score)
    scores = scores.view(2, len(pcts), b).permute(0, 2, 1)  # (2, B, P)
    proto = ROADProtocol(percentiles=pcts, noise=noise, score=score, space=space,
                         normalize=callable_name(normalize), seed=seed)
    return ROADResult(morf=scores[0], lerf=scores[1], base=y, percentiles=pcts, targets=t, protocol=proto)
