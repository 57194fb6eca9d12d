"""Which map to trust for this model: the verdict of a run, from its tables' numbers and tests only.

The rule (printed with every verdict):

1. A method qualifies only if (a) its maps change under parameter randomisation: the mean Spearman
   rank correlation of its top-1 maps with the maps of the same class on the model with every
   parameter re-initialised (the end of the cascade, column "sanity") is below
   `SANITY_THRESHOLD`; and (b) it beats every baseline map significantly on ROAD combined
   (paired bootstrap over images, Holm-corrected over the methods, p < 0.05, in the better direction;
   the baselines: uniform, centre Gaussian and random maps, and methods declaring ``baseline = True``
   such as RandomCAM).
2. Qualified methods are ranked on ROAD combined; two methods the paired test on ROAD cannot separate
   are compared on deletion AUC, then insertion AUC, then localisation (IoU) where the data has boxes
   (Holm-corrected over the pairs of qualified methods, per metric); when none separates them they
   are a tie.
3. When no method qualifies: "no method beats the baselines on this model and data".
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from . import stats
from .evidence import ALPHA, is_baseline
from .report import Summary
from .sources import model_label

SANITY_THRESHOLD = 0.5
PRIMARY = "road"
TIE_BREAKERS = ("deletion", "insertion", "iou")
NONE_QUALIFIES = "no method beats the baselines on this model and data"

RULE = (f"Verdict rule: a method qualifies only if its maps change under parameter randomisation (mean Spearman "
        f"rank correlation of its top-1 maps with those of the fully randomised model below {SANITY_THRESHOLD:g}) "
        f"and it beats every baseline significantly on ROAD combined (paired bootstrap, Holm, p < {ALPHA:g}; baselines: "
        "the uniform, centre and random maps and methods declared as baselines, e.g. RandomCAM); "
        "qualified methods are ranked on ROAD combined, then deletion AUC, insertion AUC and IoU (where boxes "
        "exist); methods the paired tests cannot separate are ties.")


@dataclass(frozen=True)
class Verdict:
    """One model's verdict: ``ranking`` = tiers of qualified methods, best first (the methods of a tier
    cannot be separated); ``rejected`` = method -> why it does not qualify."""

    model: str
    ranking: list[list[str]]
    rejected: dict[str, str] = field(default_factory=dict)
    road: dict[str, float] = field(default_factory=dict)  # method -> ROAD combined

    @property
    def trusted(self) -> list[str]:
        """The methods to trust: the first tier ([] when none qualifies)."""
        return self.ranking[0] if self.ranking else []

    def headline(self) -> str:
        """One line: the method(s) to trust, or `NONE_QUALIFIES`."""
        top = self.trusted
        if not top:
            return f"{model_label(self.model)}: {NONE_QUALIFIES}"
        what = top[0] if len(top) == 1 else f"{', '.join(top[:-1])} or {top[-1]} (tied: the paired tests cannot separate them)"
        return f"{model_label(self.model)}: trust {what} (ROAD combined {self.road[top[0]]:.4f}, beats every baseline)"

    def lines(self) -> list[str]:
        """The headline, the full ranking and why the others do not qualify."""
        out = [self.headline()]
        if self.ranking:
            out.append("  ranking: " + " > ".join(" = ".join(tier) for tier in self.ranking))
        for method, why in self.rejected.items():
            out.append(f"  not {method}: {why}")
        return out


def _holm_pairs(s: Summary, key: str, model: str, methods: list[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """(a, b) -> (a - b, Holm-corrected p) over the unordered pairs of ``methods`` on ``key``."""
    pairs = s.pairwise.get((key, model), {})
    keys = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:] if (a, b) in pairs]
    adjusted = stats.holm([pairs[k].p for k in keys])
    out = {}
    for (a, b), p in zip(keys, adjusted):
        d = pairs[(a, b)].diff
        out[(a, b)], out[(b, a)] = (d, p), (-d, p)
    return out


def _has_values(s: Summary, key: str, model: str) -> bool:
    return any(s.values.get((key, model, m)) is not None for m in s.methods)


def verdict(s: Summary, model: str, threshold: float = SANITY_THRESHOLD) -> Verdict:
    """The verdict for ``model`` from the summary's values, baseline tests and pairwise tests."""
    candidates = [m for m in s.methods if not is_baseline(m)]
    rejected: dict[str, str] = {}
    qualified = []
    for m in candidates:
        sanity = s.values.get(("sanity", model, m))
        road = s.values.get((PRIMARY, model, m))
        if road is None:
            rejected[m] = "no ROAD value" + (" (it cannot run on this model)" if (model, m) in s.errors else "")
        elif sanity is None or math.isnan(sanity):
            rejected[m] = "no randomisation check (sanity off or failed)"
        elif not sanity < threshold:
            rejected[m] = f"its maps barely change when the model is randomised (rank correlation {sanity:.3f} >= {threshold:g})"
        elif not s.beats_baselines(PRIMARY, model, m):
            rejected[m] = f"does not beat every baseline map significantly on ROAD combined ({road:.4f})"
        else:
            qualified.append(m)
    road = {m: float(s.values[(PRIMARY, model, m)]) for m in qualified}  # type: ignore[arg-type]
    keys = [PRIMARY] + [k for k in TIE_BREAKERS if _has_values(s, k, model)]
    tests = {k: _holm_pairs(s, k, model, qualified) for k in keys}
    better = {k: s.column(k).better for k in keys}

    def decide(a: str, b: str) -> int:
        """-1 when a ranks above b, 1 when below, 0 when no metric separates them."""
        for k in keys:
            d, p = tests[k].get((a, b), (0.0, 1.0))
            if p < ALPHA and d != 0:
                return -1 if (d > 0) == (better[k] == "higher") else 1
        return 0

    by_road = sorted(qualified, key=lambda m: -round(road[m], 4))  # table order among equal values
    ordered = sorted(by_road, key=functools.cmp_to_key(decide))
    ranking: list[list[str]] = []
    for m in ordered:
        if ranking and decide(ranking[-1][0], m) == 0:
            ranking[-1].append(m)
        else:
            ranking.append([m])
    return Verdict(model, ranking, rejected, road)


def verdicts(s: Summary, threshold: float = SANITY_THRESHOLD) -> list[Verdict]:
    """One `Verdict` per model of the summary."""
    return [verdict(s, m, threshold) for m in s.models]


def verdict_notes(s: Summary) -> list[str]:
    """``"model / method: why it does not qualify"``, one line per method that does not."""
    return [f"{model_label(v.model)} / {m}: {why}" for v in verdicts(s) for m, why in v.rejected.items()]


def verdict_lines(s: Summary) -> list[str]:
    """Per model the headline and the ranking, then `RULE`: what the report and the terminal show
    (why each other method does not qualify: `Verdict.lines`)."""
    out = []
    for v in verdicts(s):
        out.append(v.headline())
        if len(v.ranking) > 1:
            out.append(f"{model_label(v.model)} ranking: " + " > ".join(" = ".join(t) for t in v.ranking))
    return out + [RULE]
