"""How sure each table number is, from per-image values: intervals per cell, each method against the
baseline maps, method against method, and the sentences and CSV that say it.

A `Family` is one model x metric: per method (baselines included), the per-image values on
the same images (NaN where a method has none). Every statistic comes from `.stats`: 95%
percentile bootstrap over images, the same resampled images for every method (paired), two-sided
bootstrap p-values, Holm's correction over the methods of one model x metric.
"""
from __future__ import annotations

import csv
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import stats
from ..errors import CamkitError
from ..methods import get
from .config import BASELINE_PREFIX

ALPHA = 0.05
PAIRWISE_METRICS = ("iou", "deletion", "insertion", "road")


@dataclass(frozen=True)
class Interval:
    """A table cell: the statistic on all images, its percentile interval and the images behind it."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class BaselineTest:
    """``method`` against the best ``baseline`` of one model x metric (diff = method - baseline)."""

    model: str
    metric: str
    method: str
    baseline: str
    comparison: stats.Comparison
    p_holm: float
    beats_every_baseline: bool


@functools.lru_cache(maxsize=None)
def is_baseline(method: str) -> bool:
    """A baseline map (``baseline:NAME``) or a method that declares itself a sanity baseline
    (``baseline = True``: RandomCAM): compared against, never recommended."""
    if method.startswith(BASELINE_PREFIX):
        return True
    try:
        return bool(getattr(get(method), "baseline", False))
    except CamkitError:  # a name no longer registered (an old run's records)
        return False


def better_direction(diff: float, better: str) -> bool:
    return diff > 0 if better == "higher" else diff < 0


class Family:
    """One model x metric: per-image values of each method, bootstrapped once on shared resamples."""

    def __init__(self, model: str, metric: str, better: str, values: dict[str, np.ndarray],
                 resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> None:
        self.model, self.metric, self.better = model, metric, better
        self.values = {m: v for m, v in values.items() if stats.known(v).any()}
        self.resamples, self.seed = resamples, seed
        names = list(self.values)
        dists = stats.bootstrap([self.values[m] for m in names], resamples, seed) if names else []
        self.dist = dict(zip(names, dists))
        self.point = {m: stats.aggregate(v) for m, v in self.values.items()}
        self.known = {m: stats.known(v) for m, v in self.values.items()}

    @property
    def methods(self) -> list[str]:
        return list(self.values)

    def interval(self, method: str) -> Interval:
        lo, hi = stats.percentile_interval(self.dist[method])
        return Interval(self.point[method], lo, hi, int(self.known[method].sum()))

    def compare(self, a: str, b: str) -> stats.Comparison:
        """Paired ``a - b``; reuses the shared resamples when both have values on the same images."""
        rows = self.known[a]
        if np.array_equal(rows, self.known[b]):
            return stats.difference(self.values[a][rows], self.values[b][rows], self.dist[a], self.dist[b])
        return stats.compare(self.values[a], self.values[b], self.resamples, self.seed)

    def best(self, candidates: Sequence[str]) -> Optional[str]:
        """The candidate with the best statistic (first on ties)."""
        scored = [(self.point[m], m) for m in candidates if m in self.point]
        if not scored:
            return None
        sign = 1 if self.better == "higher" else -1
        return max(scored, key=lambda t: sign * t[0])[1]

    def baseline_tests(self) -> list[BaselineTest]:
        """Each method against the best baseline map (Holm over the methods); ``beats_every_baseline``
        when it is significantly better (Holm-corrected, in the better direction) than each baseline."""
        methods = [m for m in self.methods if not is_baseline(m)]
        baselines = [m for m in self.methods if is_baseline(m)]
        best = self.best(baselines)
        if best is None or not methods:
            return []
        results: dict[str, list[tuple[stats.Comparison, float]]] = {m: [] for m in methods}
        adjusted: dict[str, dict[str, tuple[stats.Comparison, float]]] = {}
        for b in baselines:
            comps = [self.compare(m, b) for m in methods]
            adjusted[b] = {m: (c, p) for m, c, p in zip(methods, comps, stats.holm([c.p for c in comps]))}
            for m in methods:
                results[m].append(adjusted[b][m])
        out = []
        for m in methods:
            every = all(p < ALPHA and better_direction(c.diff, self.better) for c, p in results[m])
            c, p = adjusted[best][m]
            out.append(BaselineTest(self.model, self.metric, m, best, c, p, every))
        return out

    def pairwise(self) -> dict[tuple[str, str], stats.Comparison]:
        """``(a, b) -> a - b`` for every ordered pair of methods (baselines left out)."""
        methods = [m for m in self.methods if not is_baseline(m)]
        out = {}
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                c = self.compare(a, b)
                out[(a, b)] = c
                out[(b, a)] = stats.Comparison(-c.diff, -c.high, -c.low, c.p, c.n)
        return out

    def top_group(self) -> tuple[Optional[str], list[str], list[str]]:
        """(best method, methods not distinguishable from it, methods worse than it): each compared with
        the best, Holm over those comparisons."""
        methods = [m for m in self.methods if not is_baseline(m)]
        best = self.best(methods)
        if best is None:
            return None, [], []
        others = [m for m in methods if m != best]
        comps = [self.compare(m, best) for m in others]
        p_adj = stats.holm([c.p for c in comps])
        tied = [m for m, p in zip(others, p_adj) if not p < ALPHA]
        worse = [m for m, p in zip(others, p_adj) if p < ALPHA]
        return best, tied, worse


def _names(items: Sequence[str], limit: int = 6) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def findings(model: str, tests: Sequence[BaselineTest], groups: dict[str, tuple[Optional[str], list[str], list[str]]],
             label: Callable[[str], str]) -> str:
    """One paragraph for a model: which methods beat every baseline, per metric, and which methods can
    be told apart from the best one on the method-vs-method metrics. ``label(metric key)`` names a metric."""
    metrics = list(dict.fromkeys(t.metric for t in tests if t.model == model))
    per = []
    for metric in metrics:
        winners = [t.method for t in tests if t.model == model and t.metric == metric and t.beats_every_baseline]
        n_methods = sum(t.model == model and t.metric == metric for t in tests)
        text = "all methods" if winners and len(winners) == n_methods else _names(winners)
        per.append(f"{label(metric)}: {text}")
    parts = [f"Significantly better than every baseline map (paired bootstrap, Holm, {ALPHA:g}): " + "; ".join(per) + "."
             if per else "No baseline maps to compare with."]
    between = []
    for metric, (best, tied, worse) in groups.items():
        if best is None:
            continue
        if not worse:
            text = (f"{best} is best but cannot be told apart from {_names(tied)}" if tied else f"only {best}")
        elif not tied:
            text = f"{best} is best, significantly better than each of the other {len(worse)} ({_names(worse)})"
        else:
            text = (f"{best} is best; {_names(tied)} cannot be told apart from it; {len(worse)} "
                    f"method{'s are' if len(worse) != 1 else ' is'} worse ({_names(worse)})")
        between.append(f"{label(metric)}: {text}")
    if between:
        parts.append("Between methods — " + "; ".join(between) + ".")
    return " ".join(parts)


def significance_csv(tests: Sequence[BaselineTest]) -> str:
    """``significance.csv``: one row per model x metric x method against the best baseline map."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "metric", "method", "baseline", "diff", "ci_low", "ci_high", "p", "p_holm", "n",
                "beats_every_baseline"])
    for t in tests:
        c = t.comparison
        w.writerow([t.model, t.metric, t.method, t.baseline, *(_num(v) for v in (c.diff, c.low, c.high, c.p, t.p_holm)),
                    c.n, str(t.beats_every_baseline).lower()])
    return buf.getvalue()


def _num(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.6g}"
