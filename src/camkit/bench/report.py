"""Tables from records only: every number of ``table.md`` / ``table.csv`` is recomputed from
``results.jsonl`` by the functions here (nothing is carried over from the run in memory).

Table 8 of the survey: rows = methods (then the baseline maps), column groups = IoU, Average Drop %,
Increase in Confidence %, one column per model, all for the predicted (top-1) class over every
image with a box. A second table adds the Pointing Game, the Energy Pointing Game, MaxBoxAcc,
Deletion / Insertion AUC and the IoU of the least predicted class. Then accuracy per model and the
protocol. Timings are not in these tables (they differ between two runs of the same thing); they
are in the HTML report and the summary.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .. import metrics
from .config import BASELINE_PREFIX, BenchConfig
from .sources import model_label, random_weights, random_weights_warning

Record = dict[str, Any]


def _mean(values: Sequence[Any]) -> Optional[float]:
    v = [float(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _field(name: str, kind: str = "top1") -> Callable[[list[Record]], Optional[float]]:
    def fn(records: list[Record]) -> Optional[float]:
        return _mean([r.get(name) for r in records if r["kind"] == kind])
    return fn


def _confidence(which: str) -> Callable[[list[Record]], Optional[float]]:
    def fn(records: list[Record]) -> Optional[float]:
        pairs = [(r["y"], r["o"]) for r in records if r["kind"] == "top1" and r.get("y") is not None
                 and r.get("o") is not None and (which != "drop" or r["y"] > 0)]
        if not pairs:
            return None
        y, o = [p[0] for p in pairs], [p[1] for p in pairs]
        if which == "drop":
            return metrics.average_drop_from_scores(y, o)
        return metrics.increase_in_confidence_from_scores(y, o)
    return fn


def _maxboxacc(iou: float) -> Callable[[list[Record]], Optional[float]]:
    def fn(records: list[Record]) -> Optional[float]:
        rows = [r["box_ious"] for r in records if r["kind"] == "top1" and r.get("box_ious")]
        if not rows:
            return None
        n = len(rows[0])
        return metrics.max_box_acc_from_ious(torch.tensor(rows), [t / n for t in range(n)], iou).value
    return fn


@dataclass(frozen=True)
class Column:
    """One metric column group: label, which direction is better, decimals, and how to compute it."""

    key: str
    label: str
    better: str  # "higher" | "lower"
    decimals: int
    compute: Callable[[list[Record]], Optional[float]]


def columns(protocol_iou: float = 0.5) -> tuple[list[Column], list[Column]]:
    """(Table 8 columns, further metric columns)."""
    table8 = [
        Column("iou", "IoU", "higher", 4, _field("iou")),
        Column("average_drop", "Average Drop %", "lower", 2, _confidence("drop")),
        Column("increase", "Increase in Confidence %", "higher", 2, _confidence("increase")),
    ]
    more = [
        Column("pointing", "Pointing game", "higher", 4, _field("pointing")),
        Column("energy", "Energy pointing game", "higher", 4, _field("energy")),
        Column("maxboxacc", f"MaxBoxAcc (IoU>={protocol_iou})", "higher", 4, _maxboxacc(protocol_iou)),
        Column("deletion", "Deletion AUC", "lower", 4, _field("deletion")),
        Column("insertion", "Insertion AUC", "higher", 4, _field("insertion")),
        Column("iou_least", "IoU, least predicted class", "lower", 4, _field("iou", "least")),
        Column("sanity", "Rank corr. with randomised model", "lower", 4, _field("sanity")),
    ]
    return table8, more


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
    timing: dict[tuple[str, str], float]  # (model, method) -> seconds per image (map only)
    counts: dict[tuple[str, str], int]  # (model, method) -> top-1 records
    protocol: list[str] = field(default_factory=list)
    data: str = ""
    note: str = ""
    problems: dict[str, int] = field(default_factory=dict)

    def accuracy(self, model: str) -> Optional[float]:
        n = self.images.get(model, 0)
        return self.correct.get(model, 0) / n * 100 if n else None


def _ordered(seen: Sequence[str], preferred: Sequence[str]) -> list[str]:
    first = [p for p in preferred if p in seen]
    return first + sorted(set(seen) - set(first))


def summarize(records: list[Record], config: BenchConfig, problems: Optional[dict[str, int]] = None) -> Summary:
    """The tables' numbers from ``records`` (as read from ``results.jsonl``)."""
    maps = [r for r in records if r.get("type") == "map"]
    images = [r for r in records if r.get("type") == "image"]
    baselines = [BASELINE_PREFIX + b for b in config.protocol.baselines]
    errs = [r for r in records if r.get("type") == "error"]
    seen_models = {r["model"] for r in maps + images + errs}
    models = _ordered(sorted(seen_models), config.models)
    seen_methods = {r["method"] for r in maps} | {r["method"] for r in errs if ":" not in r["method"]
                                                   or r["method"].startswith(BASELINE_PREFIX)}
    methods = _ordered(sorted(seen_methods - set(baselines)), config.methods) + [b for b in baselines if b in seen_methods]
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in maps:
        groups[(r["model"], r["method"])].append(r)
    table8, more = columns(config.protocol.maxboxacc_iou)
    values = {(c.key, mo, me): c.compute(groups.get((mo, me), [])) for c in table8 + more
              for mo in models for me in methods}
    timing = {k: _mean([r.get("time_map_s") for r in v if r["kind"] == "top1"]) or 0.0 for k, v in groups.items()}
    counts = {k: sum(r["kind"] == "top1" for r in v) for k, v in groups.items()}
    return Summary(
        models=models, methods=methods, table8=table8, more=more, values=values,
        images={m: sum(r["model"] == m for r in images) for m in models},
        correct={m: sum(r["model"] == m and bool(r["correct"]) for r in images) for m in models},
        skipped=sorted({r["image"] for r in records if r.get("type") == "skip"}),
        errors={(r["model"], r["method"]): r["error"] for r in errs},
        timing=timing, counts=counts, protocol=config.protocol.describe(), data=config.data, note=config.note,
        problems=dict(problems or {}),
    )


def fmt(value: Optional[float], decimals: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def _cell(s: Summary, col: Column, model: str, method: str) -> str:
    value = s.values[(col.key, model, method)]
    if value is None and (model, method) in s.errors:
        return "n/a¹"
    return fmt(value, col.decimals)


def _md_table(s: Summary, cols: list[Column]) -> list[str]:
    head = ["Method"] + [f"{c.label} ({'↑' if c.better == 'higher' else '↓'}): {model_label(m)}"
                         for c in cols for m in s.models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in s.methods:
        row = [method] + [_cell(s, c, m, method) for c in cols for m in s.models]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_counts(methods: Sequence[str]) -> str:
    """``"3 methods and 3 baselines"``: the rows of the tables, counted by kind."""
    n_base = sum(m.startswith(BASELINE_PREFIX) for m in methods)
    text = _plural(len(methods) - n_base, "method")
    return text + (f" and {_plural(n_base, 'baseline')}" if n_base else "")


def markdown(s: Summary) -> str:
    """``table.md``: Table 8, the further metrics, accuracy, problems and the protocol."""
    out = ["# camkit benchmark", "",
           f"Data: `{s.data}`; models: {', '.join(model_label(m) for m in s.models)}; "
           f"{run_counts(s.methods)}." + (f" Note: {s.note}" if s.note else ""), ""]
    out += [line for m in s.models if random_weights(m) for line in (f"**Warning: {random_weights_warning(m)}.**", "")]
    out += ["## Table 8: localisation and confidence (predicted class)", ""]
    out += _md_table(s, s.table8)
    out += ["", "## Further metrics (predicted class unless stated)", ""]
    out += _md_table(s, s.more)
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
    """``table.csv``: one row per method, one column per (metric, model), full precision."""
    cols = s.table8 + s.more
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + [f"{c.key}:{m}" for c in cols for m in s.models])
    for method in s.methods:
        vals = [s.values[(c.key, m, method)] for c in cols for m in s.models]
        w.writerow([method] + ["" if v is None else f"{v:.6f}" for v in vals])
    acc = [s.accuracy(m) for c in cols for m in s.models]  # repeated under each metric, for a rectangular table
    w.writerow(["accuracy %"] + ["" if v is None else f"{v:.6f}" for v in acc])
    return buf.getvalue()
