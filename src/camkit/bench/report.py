"""Tables from records only: every number of ``table.md`` / ``table.csv`` is recomputed from
``results.jsonl`` by the functions here (nothing is carried over from the run in memory).

Table 8 of the survey: rows = methods (then the baseline maps), column groups = IoU, Average Drop %,
Increase in Confidence %, one column per model, all for the predicted (top-1) class over every
image with a box. A second table adds the Pointing Game, the Energy Pointing Game, MaxBoxAcc,
Deletion / Insertion AUC and the IoU of the least predicted class. Then accuracy per model and the
protocol. Timings are not in these tables (they differ between two runs of the same thing); they
are in the HTML report and the summary.

Every cell is an aggregate of per-image values (`Column`): the tables carry its 95% bootstrap
interval and n, ``significance.csv`` each method against the best baseline map, and the HTML report
the method-vs-method differences -- all from `.evidence` / `.stats` on those values.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from . import stats
from .config import BASELINE_PREFIX, BenchConfig
from .evidence import ALPHA, PAIRWISE_METRICS, BaselineTest, Family, Interval, findings, is_baseline, significance_csv
from .sources import model_label, random_weights, random_weights_warning
from .stats import Comparison

Record = dict[str, Any]


def _median(values: Sequence[Any]) -> Optional[float]:
    v = sorted(float(x) for x in values if x is not None)
    if not v:
        return None
    h = len(v) // 2
    return v[h] if len(v) % 2 else (v[h - 1] + v[h]) / 2


PerImage = Callable[[Record], Any]  # a record -> its image's value (float, a list for MaxBoxAcc, or None)


def _field(name: str) -> PerImage:
    return lambda r: r.get(name)


def _drop(r: Record) -> Optional[float]:
    """max(0, Y - O) / Y x 100 (Average Drop's per-image term), where Y > 0."""
    y, o = r.get("y"), r.get("o")
    return None if y is None or o is None or y <= 0 else max(0.0, y - o) / y * 100


def _increase(r: Record) -> Optional[float]:
    """100 where O > Y, else 0 (Increase in Confidence is their mean)."""
    y, o = r.get("y"), r.get("o")
    return None if y is None or o is None else 100.0 * (o > y)


def _hits(iou: float) -> PerImage:
    """Per threshold, 1 where the box IoU reaches ``iou`` (MaxBoxAcc = max over thresholds of the mean)."""
    def fn(r: Record) -> Optional[list[float]]:
        row = r.get("box_ious")
        return [float(v is not None and v >= iou) for v in row] if row else None
    return fn


@dataclass(frozen=True)
class Column:
    """One metric column group: label, which direction is better, decimals, and each image's value
    (records of target ``kind``); the cell is the mean of the values, or for list values (MaxBoxAcc)
    the maximum over positions of the per-position means (`.stats.aggregate`)."""

    key: str
    label: str
    better: str  # "higher" | "lower"
    decimals: int
    value: PerImage
    kind: str = "top1"


def columns(protocol_iou: float = 0.5) -> tuple[list[Column], list[Column]]:
    """(Table 8 columns, further metric columns)."""
    table8 = [
        Column("iou", "IoU", "higher", 4, _field("iou")),
        Column("average_drop", "Average Drop %", "lower", 2, _drop),
        Column("increase", "Increase in Confidence %", "higher", 2, _increase),
    ]
    more = [
        Column("pointing", "Pointing game", "higher", 4, _field("pointing")),
        Column("energy", "Energy pointing game", "higher", 4, _field("energy")),
        Column("maxboxacc", f"MaxBoxAcc (IoU>={protocol_iou})", "higher", 4, _hits(protocol_iou)),
        Column("deletion", "Deletion AUC", "lower", 4, _field("deletion")),
        Column("insertion", "Insertion AUC", "higher", 4, _field("insertion")),
        Column("road", "ROAD combined", "higher", 4, _field("road")),
        Column("arcc", "ARCC", "higher", 4, _field("arcc")),
        Column("iou_least", "IoU, least predicted class", "lower", 4, _field("iou"), "least"),
        Column("sanity", "Rank corr. with randomised model", "lower", 4, _field("sanity")),
    ]
    return table8, more


def column_family(col: Column, model: str, groups: dict[tuple[str, str], list[Record]], methods: Sequence[str]) -> Family:
    """Per-image values of every method for one model x column, on the images (ordered by dataset
    index) where any method has a value; NaN where a method has none."""
    per: dict[str, dict[int, Any]] = {}
    for me in methods:
        vals = {r["index"]: col.value(r) for r in groups.get((model, me), []) if r["kind"] == col.kind}
        per[me] = {i: v for i, v in vals.items() if v is not None}
    images = sorted({i for v in per.values() for i in v})
    width = max((len(v) for d in per.values() for v in d.values() if isinstance(v, list)), default=0)
    values = {}
    for me, d in per.items():
        if not d:
            continue
        missing: Any = [math.nan] * width if width else math.nan
        values[me] = np.array([d.get(i, missing) for i in images], dtype=np.float64)
    return Family(model, col.key, col.better, values)


@dataclass
class Summary:
    """Everything the tables show, computed from records."""

    models: list[str]
    methods: list[str]
    table8: list[Column]
    more: list[Column]
    values: dict[tuple[str, str, str], Optional[float]]  # (column key, model, method) -> value
    images: dict[str, int]  # model -> images with a prediction
    correct: dict[str, int]
    skipped: list[str]  # ids of unreadable images
    errors: dict[tuple[str, str], str]  # (model, method) -> message
    timing: dict[tuple[str, str], float]  # (model, method) -> seconds per image (map only, median over batches)
    counts: dict[tuple[str, str], int]  # (model, method) -> top-1 records
    protocol: list[str] = field(default_factory=list)
    data: str = ""
    note: str = ""
    problems: dict[str, int] = field(default_factory=dict)
    intervals: dict[tuple[str, str, str], Interval] = field(default_factory=dict)  # same keys as values
    tests: list[BaselineTest] = field(default_factory=list)  # each method vs the best baseline map
    pairwise: dict[tuple[str, str], dict[tuple[str, str], Comparison]] = field(default_factory=dict)  # (key, model)
    groups: dict[tuple[str, str], tuple[Optional[str], list[str], list[str]]] = field(default_factory=dict)
    identical: dict[str, list[list[str]]] = field(default_factory=dict)  # model -> groups of methods with equal rows
    verdict: list[str] = field(default_factory=list)  # "which map to trust" lines, then the rule (set by the session)
    verdict_notes: list[str] = field(default_factory=list)  # why each other method does not qualify

    def same_as(self, method: str) -> Optional[str]:
        """The first method of ``method``'s group of identical rows, when it is the same on every model
        where ``method`` has records (None when it leads its group or differs somewhere)."""
        leads = []
        for model in self.models:
            if (model, method) not in self.counts:
                continue
            g = next((g for g in self.identical.get(model, []) if method in g), None)
            if g is None or g[0] == method:
                return None
            leads.append(g[0])
        return leads[0] if leads and len(set(leads)) == 1 else None

    def accuracy(self, model: str) -> Optional[float]:
        n = self.images.get(model, 0)
        return self.correct.get(model, 0) / n * 100 if n else None

    def beats_baselines(self, key: str, model: str, method: str) -> bool:
        """Significantly better than every baseline map on this model and metric."""
        return any(t.beats_every_baseline for t in self.tests if (t.metric, t.model, t.method) == (key, model, method))

    def column(self, key: str) -> Column:
        return next(c for c in self.table8 + self.more if c.key == key)

    def findings(self, model: str) -> str:
        """A paragraph: which methods beat the baselines and which can be told apart (see `.evidence`)."""
        groups = {k: g for (k, m), g in self.groups.items() if m == model}
        return findings(model, self.tests, groups, lambda k: self.column(k).label)


IDENTICAL_REASON = ("equal per-image values on every metric (within 1e-4), so the maps coincide. Known causes: on a "
                    "global-average-pooling head Grad-CAM, XGrad-CAM, HiResCAM and CAM weight every channel alike up "
                    "to one factor, which the normalisation removes, and the gradients there do not depend on the "
                    "input, so Smooth Grad-CAM++ (gradients averaged over noisy copies) equals Grad-CAM++; on a ReLU network with a linear head ShapleyCAM's "
                    "Hessian term is 0 (= Grad-CAM); after a ReLU the activations are >= 0, so LayerCAM "
                    "(ReLU(gradient) x A) equals Grad-CAM element-wise (ReLU(gradient x A))")
SAME_TOL = 1e-4  # identical maps still differ by float noise (1e-5 in deletion AUC: near-tied pixels swap order)
_SAME_FIELDS = ("iou", "pointing", "energy", "y", "o", "deletion", "insertion", "road", "arcc", "sanity")


def identical_rows(groups: dict[tuple[str, str], list[Record]], models: Sequence[str],
                   methods: Sequence[str]) -> dict[str, list[list[str]]]:
    """Per model, the groups (of 2 or more, in table order) of methods whose records hold equal values
    (within `SAME_TOL`) for every image, target kind and metric: identical maps."""
    out: dict[str, list[list[str]]] = {}
    for model in models:
        rows = {}
        for me in methods:
            recs = groups.get((model, me))
            if recs and not is_baseline(me):
                rows[me] = {(r["index"], r["kind"]): np.array([np.nan if r.get(f) is None else float(r[f])
                                                               for f in _SAME_FIELDS]) for r in recs}
        found: list[list[str]] = []
        for me, row in rows.items():
            for g in found:
                lead = rows[g[0]]
                if lead.keys() == row.keys() and all(
                        np.allclose(lead[k], row[k], rtol=0, atol=SAME_TOL, equal_nan=True) for k in row):
                    g.append(me)
                    break
            else:
                found.append([me])
        same = [g for g in found if len(g) > 1]
        if same:
            out[model] = same
    return out


def row_label(s: Summary, method: str) -> str:
    """The method's name, with ``(= leader)`` when its row equals an earlier one on every model."""
    lead = s.same_as(method)
    return f"{method} (= {lead})" if lead else method


def identical_lines(s: Summary) -> list[str]:
    """One line per model with identical rows, then the reason once ([] when there are none)."""
    if not s.identical:
        return []
    lines = [f"{model_label(m)}: " + "; ".join(" = ".join(g) for g in gs) for m, gs in s.identical.items()]
    return lines + [f"Why: {IDENTICAL_REASON}."]


def _ordered(seen: Sequence[str], preferred: Sequence[str]) -> list[str]:
    first = [p for p in preferred if p in seen]
    return first + sorted(set(seen) - set(first))


def report_protocol() -> list[str]:
    """How the report's intervals, tests and times are computed (not part of a run's fingerprint)."""
    return [
        f"Intervals: {stats.LEVEL:.0%} percentile bootstrap over images ({stats.RESAMPLES} resamples, seed "
        f"{stats.SEED}); every method of a model is resampled on the same images (paired); MaxBoxAcc and "
        "Increase in Confidence are recomputed on each resample (the best threshold too); n = images with a value.",
        f"Tests: each method against the best baseline map of that model and metric, paired bootstrap over images "
        f"(two-sided p = the smallest level whose percentile interval of the difference excludes 0), Holm-corrected "
        f"over the methods of one model x metric; * = significantly better than each baseline map "
        f"(Holm-corrected p < {ALPHA:g} against every one). Method vs method: the same paired bootstrap.",
        "Time: wall-clock time of the map computation only (metrics excluded; CUDA synchronised) per batch, divided "
        "by its images; each method is first run once, untimed, on one image per model and process (warm-up); "
        "the table shows the median over images.",
    ]


def summarize(records: list[Record], config: BenchConfig, problems: Optional[dict[str, int]] = None) -> Summary:
    """The tables' numbers, intervals and tests from ``records`` (as read from ``results.jsonl``)."""
    maps = [r for r in records if r.get("type") == "map"]
    images = [r for r in records if r.get("type") == "image"]
    baselines = [BASELINE_PREFIX + b for b in config.protocol.baselines]
    errs = [r for r in records if r.get("type") == "error"]
    seen_models = {r["model"] for r in maps + images + errs}
    models = _ordered(sorted(seen_models), config.models)
    seen_methods = {r["method"] for r in maps} | {r["method"] for r in errs if ":" not in r["method"]
                                                   or r["method"].startswith(BASELINE_PREFIX)}
    ordered = _ordered(sorted(seen_methods - set(baselines)), config.methods)
    methods = ([m for m in ordered if not is_baseline(m)] + [m for m in ordered if is_baseline(m)]  # RandomCAM
               + [b for b in baselines if b in seen_methods])
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in maps:
        groups[(r["model"], r["method"])].append(r)
    table8, more = columns(config.protocol.maxboxacc_iou)
    intervals, tests, pairwise, top = {}, [], {}, {}
    for c in table8 + more:
        for mo in models:
            fam = column_family(c, mo, groups, methods)
            intervals.update({(c.key, mo, me): fam.interval(me) for me in fam.methods})
            tests += fam.baseline_tests()
            if c.key in PAIRWISE_METRICS:
                pairwise[(c.key, mo)] = fam.pairwise()
                top[(c.key, mo)] = fam.top_group()
    values = {(c.key, mo, me): intervals[(c.key, mo, me)].value if (c.key, mo, me) in intervals else None
              for c in table8 + more for mo in models for me in methods}
    timing = {k: _median([r.get("time_map_s") for r in v if r["kind"] == "top1"]) or 0.0 for k, v in groups.items()}
    counts = {k: sum(r["kind"] == "top1" for r in v) for k, v in groups.items()}
    return Summary(
        models=models, methods=methods, table8=table8, more=more, values=values,
        images={m: sum(r["model"] == m for r in images) for m in models},
        correct={m: sum(r["model"] == m and bool(r["correct"]) for r in images) for m in models},
        skipped=sorted({r["image"] for r in records if r.get("type") == "skip"}),
        errors={(r["model"], r["method"]): r["error"] for r in errs},
        timing=timing, counts=counts, protocol=config.protocol.describe() + report_protocol(), data=config.data,
        note=config.note, problems=dict(problems or {}), intervals=intervals, tests=tests, pairwise=pairwise, groups=top,
        identical=identical_rows(groups, models, methods),
    )


def fmt(value: Optional[float], decimals: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def interval_text(iv: Optional[Interval], decimals: int) -> str:
    """``[low, high]`` with one decimal less than the value (empty without an interval)."""
    if iv is None or not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return ""
    d = max(1, decimals - 1)
    return f"[{iv.low:.{d}f}, {iv.high:.{d}f}]"


def column_n(s: Summary, col: Column, model: str) -> int:
    """The images of a column: the most any method has (cells with fewer say so)."""
    return max((s.intervals[k].n for k in ((col.key, model, me) for me in s.methods) if k in s.intervals), default=0)


def _cell(s: Summary, col: Column, model: str, method: str) -> str:
    value = s.values[(col.key, model, method)]
    if value is None and (model, method) in s.errors:
        return "n/a¹"
    iv = s.intervals.get((col.key, model, method))
    text = " ".join(t for t in (fmt(value, col.decimals), interval_text(iv, col.decimals)) if t)
    if iv is not None and iv.n < column_n(s, col, model):
        text += f" (n={iv.n})"
    return text + ("\\*" if s.beats_baselines(col.key, model, method) else "")


def _md_table(s: Summary, cols: list[Column]) -> list[str]:
    head = ["Method"] + [f"{c.label} ({'↑' if c.better == 'higher' else '↓'}): {model_label(m)}"
                         for c in cols for m in s.models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| n (images) | " + " | ".join(str(column_n(s, c, m)) for c in cols for m in s.models) + " |")
    for method in s.methods:
        row = [row_label(s, method)] + [_cell(s, c, m, method) for c in cols for m in s.models]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_counts(methods: Sequence[str]) -> str:
    """``"3 methods and 3 baselines"``: the rows of the tables, counted by kind."""
    n_base = sum(is_baseline(m) for m in methods)
    text = _plural(len(methods) - n_base, "method")
    return text + (f" and {_plural(n_base, 'baseline')}" if n_base else "")


LEGEND = (f"Each cell: the value over all images and its {stats.LEVEL:.0%} bootstrap interval [low, high] (paired "
          f"over methods); \\* = significantly better than every baseline map (paired bootstrap, Holm-corrected, "
          f"p < {ALPHA:g}); n = images behind the column (a cell with fewer says so).")


def markdown(s: Summary) -> str:
    """``table.md``: Table 8, the further metrics, accuracy, problems and the protocol."""
    out = ["# camkit benchmark", "",
           f"Data: `{s.data}`; models: {', '.join(model_label(m) for m in s.models)}; "
           f"{run_counts(s.methods)}." + (f" Note: {s.note}" if s.note else ""), ""]
    out += [line for m in s.models if random_weights(m) for line in (f"**Warning: {random_weights_warning(m)}.**", "")]
    if s.verdict:
        out += ["## Which map to trust", ""] + [f"- {line}" for line in s.verdict[:-1]] + ["", s.verdict[-1], ""]
        if s.verdict_notes:
            out += ["<details><summary>Why the other methods do not qualify</summary>", ""]
            out += [f"- {line}" for line in s.verdict_notes] + ["", "</details>", ""]
    out += ["## Table 8: localisation and confidence (predicted class)", ""]
    out += _md_table(s, s.table8)
    out += ["", "## Further metrics (predicted class unless stated)", ""]
    out += _md_table(s, s.more)
    out += ["", LEGEND, ""]
    same = identical_lines(s)
    if same:
        out += ["## Identical rows", ""] + [f"- {line}" for line in same] + [""]
    out += ["## Which methods can be told apart", ""]
    out += [f"- **{model_label(m)}**: {s.findings(m)}" for m in s.models]
    out += ["", "Every comparison of each method with the best baseline map: `significance.csv`."]
    out += ["", "## Classification accuracy", "", "| Model | Images | Correct | Top-1 accuracy % |", "|---|---|---|---|"]
    for m in s.models:
        out.append(f"| {model_label(m)} | {s.images.get(m, 0)} | {s.correct.get(m, 0)} | {fmt(s.accuracy(m), 2)} |")
    out += ["", "## Data", "",
            f"Unreadable images skipped: {len(s.skipped)}" + (f" ({', '.join(s.skipped[:20])})" if s.skipped else "")]
    if s.problems:
        out.append("Dataset problems: " + ", ".join(f"{k}: {v}" for k, v in sorted(s.problems.items())))
    if s.errors:
        out += ["", "¹ Methods that cannot run on a model:", ""]
        out += [f"- {model_label(mo)} / {me}: {msg}" for (mo, me), msg in sorted(s.errors.items())]
    out += ["", "## Protocol", ""] + [f"- {line}" for line in s.protocol]
    out += ["- IoU, pointing games, MaxBoxAcc: images with at least one ground-truth box; Average Drop, "
            "Increase in Confidence, Deletion, Insertion: every image; top-1 = the model's prediction, "
            "least = its lowest-scoring class."]
    return "\n".join(out) + "\n"


def csv_text(s: Summary) -> str:
    """``table.csv``: one row per method; per (metric, model) the value, its interval and n, full precision."""
    cols = s.table8 + s.more
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + [f"{c.key}:{m}{suffix}" for c in cols for m in s.models
                             for suffix in ("", ":ci_low", ":ci_high", ":n")])
    num = lambda v: "" if v is None or not math.isfinite(v) else f"{v:.6f}"  # noqa: E731
    for method in s.methods:
        row = [method]
        for c in cols:
            for m in s.models:
                iv = s.intervals.get((c.key, m, method))
                row += [num(s.values[(c.key, m, method)])] + (["", "", ""] if iv is None else
                                                               [num(iv.low), num(iv.high), str(iv.n)])
        w.writerow(row)
    acc = [s.accuracy(m) for c in cols for m in s.models]  # repeated under each metric, for a rectangular table
    w.writerow(["accuracy %"] + [x for v in acc for x in (num(v), "", "", "")])
    return buf.getvalue()


def significance_text(s: Summary) -> str:
    """``significance.csv``: each method against the best baseline map of each model x metric."""
    return significance_csv(s.tests)
