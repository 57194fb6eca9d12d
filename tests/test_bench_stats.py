"""Bootstrap intervals, paired tests and Holm's correction (camkit.bench.stats / .evidence), checked
against computations written out here independently (fancy indexing instead of multiplicity counts,
Holm by hand), plus the record path: intervals narrow with n, and a family's tests.
"""
from __future__ import annotations

import numpy as np
import pytest

from camkit.bench import BenchConfig, Protocol
from camkit.bench import stats
from camkit.bench.evidence import Family
from camkit.bench.report import summarize


def independent_bootstrap(values: np.ndarray, resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> np.ndarray:
    """Resample b draws n image indices with ``default_rng(seed).integers(0, n, n)`` (b-th call); the
    statistic is the NaN-mean of the drawn values, or for (n, T) values the max over T of the column means."""
    rng = np.random.default_rng(seed)
    n = len(values)
    idx = np.stack([rng.integers(0, n, size=n) for _ in range(resamples)])
    drawn = values[idx]  # (B, n) or (B, n, T)
    means = np.nanmean(drawn, axis=1)
    return means if values.ndim == 1 else means.max(axis=-1)


def test_bootstrap_equals_independent_resampling_for_means_and_best_threshold_shares():
    rng = np.random.default_rng(7)
    iou = rng.random(23)
    iou[[3, 11]] = np.nan  # images without a value (e.g. no box)
    hits = (rng.random((23, 6)) > np.linspace(0.2, 0.8, 6)).astype(float)  # MaxBoxAcc-style (n, T)
    got_iou, got_hits = stats.bootstrap([iou, hits])
    np.testing.assert_allclose(got_iou, independent_bootstrap(iou), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_hits, independent_bootstrap(hits), rtol=0, atol=1e-12)
    assert stats.aggregate(iou) == pytest.approx(np.nanmean(iou))
    assert stats.aggregate(hits) == pytest.approx(hits.mean(0).max())
    lo, hi = stats.percentile_interval(got_iou)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(independent_bootstrap(iou), [2.5, 97.5])))


def test_every_method_is_resampled_on_the_same_images():
    """Paired: the bootstrap distribution of a - b equals the difference of their distributions,
    which holds only when both are computed on the same resampled images."""
    rng = np.random.default_rng(3)
    a, b = rng.random(40), rng.random(40)
    da, db = stats.bootstrap([a, b])
    (dd,) = stats.bootstrap([a - b])
    np.testing.assert_allclose(da - db, dd, atol=1e-12)
    (da_alone,) = stats.bootstrap([a])  # the draws depend on (n, seed) only, not on the other arrays
    np.testing.assert_allclose(da, da_alone, rtol=0, atol=1e-12)
    c = stats.compare(a, b)
    assert c.diff == pytest.approx(a.mean() - b.mean()) and c.n == 40
    assert (c.low, c.high) == pytest.approx(tuple(np.percentile(independent_bootstrap(a - b), [2.5, 97.5])))


def test_compare_uses_the_images_both_methods_have():
    a = np.array([0.9, 0.8, np.nan, 0.7, 0.6])
    b = np.array([0.1, np.nan, 0.3, 0.2, 0.2])
    c = stats.compare(a, b)
    common = np.array([0.9 - 0.1, 0.7 - 0.2, 0.6 - 0.2])
    assert c.n == 3 and c.diff == pytest.approx(common.mean())
    assert c.low > 0 and c.p == pytest.approx(2 / (stats.RESAMPLES + 1))  # every resample favours a
    tie = stats.compare(a, a + 1e-9)  # identical maps up to float noise (CAM and Grad-CAM on a GAP head)
    assert (tie.diff, tie.low, tie.high, tie.p, tie.n) == (0.0, 0.0, 0.0, 1.0, 4)


def test_bootstrap_p_and_holm_by_hand():
    assert stats.bootstrap_p(np.zeros(99)) == 1.0  # identical maps: no evidence at all
    assert stats.bootstrap_p(np.ones(99)) == pytest.approx(2 / 100)
    d = np.array([-1.0] * 10 + [1.0] * 90)  # 10 of 100 resamples below 0
    assert stats.bootstrap_p(d) == pytest.approx(2 * 11 / 101)
    p = [0.01, 0.04, 0.03, float("nan"), 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4*0.01, max(0.04, 3*0.03), max(0.09, 2*0.04), max(0.09, 0.5)
    adj = stats.holm(p)
    assert adj[0] == pytest.approx(0.04) and adj[2] == pytest.approx(0.09) and adj[1] == pytest.approx(0.09)
    assert adj[4] == pytest.approx(0.5) and np.isnan(adj[3])
    assert all(h >= q for h, q in zip(adj, p) if np.isfinite(q))


def test_family_tests_against_every_baseline_and_holm():
    rng = np.random.default_rng(11)
    n = 60
    base = rng.random(n) * 0.3
    values = {
        "good": base + 0.4 + rng.normal(0, 0.05, n),   # clearly above every baseline
        "same": base + rng.normal(0, 0.05, n),          # indistinguishable from baseline:a
        "twin": base + 0.4 + rng.normal(0, 0.05, n),
        "baseline:a": base,
        "baseline:b": base - 0.1,
    }
    fam = Family("m", "iou", "higher", values)
    tests = {t.method: t for t in fam.baseline_tests()}
    assert set(tests) == {"good", "same", "twin"} and all(t.baseline == "baseline:a" for t in tests.values())
    assert tests["good"].beats_every_baseline and not tests["same"].beats_every_baseline
    assert all(t.p_holm >= t.comparison.p for t in tests.values())
    raw = [tests[m].comparison.p for m in ("good", "same", "twin")]
    assert [tests[m].p_holm for m in ("good", "same", "twin")] == pytest.approx(stats.holm(raw))
    best, tied, worse = fam.top_group()
    assert {best} | set(tied) == {"good", "twin"} and worse == ["same"]
    pairs = fam.pairwise()
    assert pairs[("good", "same")].diff == pytest.approx(-pairs[("same", "good")].diff)
    assert pairs[("good", "same")].low == pytest.approx(-pairs[("same", "good")].high)


def _records(n: int, seed: int = 0) -> list[dict]:
    """Synthetic top-1 records of two methods and a baseline on n images (IoU only)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        for method, mu in (("gradcam", 0.5), ("layercam", 0.45), ("baseline:uniform", 0.2)):
            out.append({"type": "map", "model": "m", "method": method, "image": f"img{i}", "index": i,
                        "kind": "top1", "iou": float(np.clip(rng.normal(mu, 0.2), 0, 1)), "correct": True})
    return out


def test_intervals_narrow_as_images_grow():
    """16 vs 256 images of the same distribution: the width shrinks about as 1/sqrt(n) (4x here)."""
    config = BenchConfig(models=("m",), methods=("gradcam", "layercam"), protocol=Protocol(baselines=("uniform",)))
    small, large = summarize(_records(16), config), summarize(_records(256), config)
    for method in ("gradcam", "layercam", "baseline:uniform"):
        a, b = small.intervals[("iou", "m", method)], large.intervals[("iou", "m", method)]
        assert a.n == 16 and b.n == 256
        assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
        ratio = (a.high - a.low) / (b.high - b.low)
        assert 2.5 < ratio < 6.5, (method, ratio)
