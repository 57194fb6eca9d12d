"""Bootstrap intervals and paired tests over images: pure functions on arrays (no records, no I/O).

Every number of a benchmark table is an aggregate over images of per-image values ``x``: a mean
(IoU, Average Drop, deletion AUC; a share such as the pointing game is the mean of 0/1 values), or,
for a ``(n, T)`` array, the maximum over the T columns of the column means (MaxBoxAcc: the best
threshold's share of hits). Missing values are NaN. A resample draws n images with replacement;
its statistic is the same aggregate over the drawn images, with their multiplicities:

    mean_b = sum_i c_bi m_i x_i / sum_i c_bi m_i        (c_bi = times image i is drawn, m_i = x_i known)

The draws depend only on ``(n, seed)`` (row b = the (b+1)-th call ``rng.integers(0, n, n)`` of
``numpy.random.default_rng(seed)``), so every method, metric and model with n images is resampled
on the same images and differences are paired. Intervals are percentile intervals; the test of a
paired difference inverts them (two-sided bootstrap p-value); `holm` corrects a family.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
TIE = 1e-6  # per-image values closer than this are equal
_CHUNK = 250  # resamples per matrix product (memory: chunk x n counts)


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """The image indices of each resample: ``resamples`` arrays of n draws from ``range(n)``."""
    if n < 1:
        raise ValueError(f"cannot resample {n} images")
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, size=n)


def _counts(rows: list[np.ndarray], n: int) -> np.ndarray:
    """(len(rows), n) multiplicities of each image in each resample."""
    flat = np.concatenate([r + k * n for k, r in enumerate(rows)])
    return np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)


def _as_columns(values: Sequence[np.ndarray]) -> tuple[np.ndarray, list[slice], int]:
    """Stack per-image arrays ((n,) or (n, T)) into one (n, K) matrix; the column slice of each."""
    cols, slices, k = [], [], 0
    n = len(values[0])
    for v in values:
        a = np.asarray(v, dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[0] != n:
            raise ValueError(f"every value array needs {n} rows (one per image), got shape {np.shape(v)}")
        cols.append(a)
        slices.append(slice(k, k + a.shape[1]))
        k += a.shape[1]
    return np.concatenate(cols, axis=1), slices, n


def _reduce(means: np.ndarray, slices: list[slice], shapes: list[int]) -> list[np.ndarray]:
    """Per value array: its column means (ndim 1) or the max over its columns (ndim 2)."""
    out = []
    for s, ndim in zip(slices, shapes):
        block = means[..., s]
        if ndim == 1:
            out.append(block[..., 0])
        else:  # all NaN only where no image has a value
            out.append(np.where(np.isnan(block).all(-1), np.nan, np.nan_to_num(block, nan=-np.inf).max(-1)))
    return out


def aggregate(values: np.ndarray) -> float:
    """The statistic on all images: NaN-mean of (n,) values, or max over columns of the column NaN-means of (n, T)."""
    x, slices, n = _as_columns([values])
    (stat,) = _reduce(_weighted_means(x, np.ones((1, n))), slices, [np.ndim(values)])
    return float(stat[0])


def _weighted_means(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    known = np.isfinite(x)
    num = counts @ np.where(known, x, 0.0)
    den = counts @ known.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap(values: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> list[np.ndarray]:
    """(resamples,) statistics of each per-image array in ``values`` (all over the same n images, NaN =
    missing), every array on the same resampled images. A resample without a known value gives NaN."""
    x, slices, n = _as_columns(values)
    means = np.empty((resamples, x.shape[1]))
    rows: list[np.ndarray] = []
    start = 0
    for idx in resample_indices(n, resamples, seed):
        rows.append(idx)
        if len(rows) == _CHUNK:
            means[start:start + len(rows)] = _weighted_means(x, _counts(rows, n))
            start, rows = start + len(rows), []
    if rows:
        means[start:] = _weighted_means(x, _counts(rows, n))
    return _reduce(means, slices, [np.ndim(v) for v in values])


def percentile_interval(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 percentiles of the bootstrap statistics (NaN ignored)."""
    s = np.asarray(stats, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of "the paired difference is 0" from its bootstrap distribution:
    p = min(1, 2 min(1 + #{d_b <= 0}, 1 + #{d_b >= 0}) / (B + 1)) -- the smallest level whose
    percentile interval excludes 0 (>= 2/(B+1); 1 when every resample differs by exactly 0)."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    low, high = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2 * (1 + min(low, high)) / (d.size + 1)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN entries stay NaN and are not counted):
    with p_(1) <= ... <= p_(m), adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, dtype=np.float64)
    known = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, np.nan)
    order = known[np.argsort(p[known], kind="stable")]
    m, running = len(order), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass(frozen=True)
class Comparison:
    """A paired difference ``a - b`` over images: point value, percentile interval, two-sided p, n images."""

    diff: float
    low: float
    high: float
    p: float
    n: int


def compare(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
            level: float = LEVEL) -> Comparison:
    """Paired bootstrap of ``aggregate(a) - aggregate(b)`` over the images where both are known (the
    others are dropped, so n = those images and the draws are those of `resample_indices` (n))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = known(a) & known(b)
    a, b = a[both], b[both]
    if not both.any():
        nan = float("nan")
        return Comparison(nan, nan, nan, nan, 0)
    sa, sb = bootstrap([a, b], resamples, seed)
    return difference(a, b, sa, sb, level)


def difference(a: np.ndarray, b: np.ndarray, dist_a: np.ndarray, dist_b: np.ndarray, level: float = LEVEL) -> Comparison:
    """The `Comparison` of per-image values ``a``, ``b`` (the same images, all known) from their
    bootstrap distributions on the same resamples. Values equal within `TIE` on every image are
    equal (0 [0, 0], p = 1): float noise between identical maps (CAM and Grad-CAM on a GAP head) is no
    evidence."""
    if np.all(np.abs(a - b) <= TIE):
        return Comparison(0.0, 0.0, 0.0, 1.0, len(a))
    diffs = dist_a - dist_b
    lo, hi = percentile_interval(diffs, level)
    return Comparison(aggregate(a) - aggregate(b), lo, hi, bootstrap_p(diffs), len(a))


def known(v: np.ndarray) -> np.ndarray:
    """(n,) bool: the images with a value (every column known, for (n, T) arrays)."""
    f = np.isfinite(np.asarray(v, dtype=np.float64))
    return f if f.ndim == 1 else f.all(axis=1)
