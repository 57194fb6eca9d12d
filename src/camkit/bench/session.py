"""A benchmark run end to end: plan, run (resumable), then tables, figures and the HTML report.

>>> from camkit.bench import BenchConfig, run_bench
>>> result = run_bench(BenchConfig(models=("digits_resnet",), methods=("gradcam", "layercam")), "out/")
>>> print(result.report)        # out/report.html

The run directory holds ``run.json`` (configuration and fingerprint), ``results.jsonl`` (every
record), ``artifacts/`` (overlays and figures the records point to), ``figures/``, ``table.md``,
``table.csv``, ``significance.csv`` and ``report.html``. Running again into the same directory
resumes: finished units are skipped; a different protocol, data or batch size is refused (it would
mix numbers).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import CamkitError
from . import figures as figs
from .config import BenchConfig
from .engines import get_engine
from .html import FigureRef, render
from .lock import directory_lock
from .plan import LEFT_OUT, make_plan
from .report import Summary, csv_text, markdown, significance_text, summarize
from .sources import load_model, load_source, model_label
from .store import RESULTS, ResultStore, _safe, read_records
from .verdict import verdict_lines

RUN_FILE = "run.json"


@dataclass
class BenchResult:
    """What a run left behind: the directory, its summary and what this call added."""

    out_dir: Path
    summary: Summary
    written: int
    units: int
    seconds: float

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def table(self) -> Path:
        return self.out_dir / "table.md"


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def _check_resume(out: Path, config: BenchConfig, resume: bool) -> None:
    results = out / RESULTS
    if not results.exists() or results.stat().st_size == 0:
        return
    if not resume:
        raise CamkitError(f"{out} already has results; resume them (--resume) or choose another output directory")
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise CamkitError(f"{out} has results but no {RUN_FILE}: not a camkit run directory, or a damaged one")
    old = BenchConfig.from_dict(json.loads(run_file.read_text(encoding="utf-8"))["config"])
    if old.fingerprint() != config.fingerprint():
        raise CamkitError(
            f"{out} holds results made with another data set, batch size or protocol ({old.data}, batch "
            f"{old.batch_size}, protocol {old.protocol.fingerprint()}); resuming would mix numbers. "
            "Use another output directory."
        )


def _merge(config: BenchConfig, out: Path) -> BenchConfig:
    """The configuration to report: this run's, plus models/methods an earlier run of the directory had."""
    run_file = out / RUN_FILE
    if not run_file.exists():
        return config
    old = BenchConfig.from_dict(json.loads(run_file.read_text(encoding="utf-8"))["config"])
    models = tuple(dict.fromkeys(config.models + old.models))
    methods = tuple(dict.fromkeys(config.methods + old.methods))
    return dataclasses.replace(config, models=models, methods=methods)


def run_bench(
    config: BenchConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    engine: str = "local",
    progress: bool = True,
    engine_options: Optional[dict[str, Any]] = None,
) -> BenchResult:
    """Run (or resume) the benchmark into ``out_dir`` and write its report; the directory is locked
    for the whole run (`directory_lock`: a second run on it stops at once, naming this one)."""
    with directory_lock(out_dir):
        return _run_locked(config, Path(out_dir), resume, engine, progress, engine_options)


def _run_locked(config: BenchConfig, out: Path, resume: bool, engine: str, progress: bool,
                engine_options: Optional[dict[str, Any]]) -> BenchResult:
    from tqdm import tqdm

    _check_resume(out, config, resume)
    source = load_source(config.data)  # fail early on bad (or no) data and models (loaded once, cached)
    for model in config.models:
        load_model(model, config.device)
    out.mkdir(parents=True, exist_ok=True)
    report_config = _merge(config, out)
    _atomic_write(out / RUN_FILE, json.dumps({"config": report_config.to_dict(), "fingerprint": config.fingerprint(),
                                              "problems": source.problems, "images": len(source)}, indent=2))
    t0 = time.perf_counter()
    with ResultStore(out) as store:
        if store.dropped:
            warnings.warn(f"{store.path}: {store.dropped} unreadable line(s) dropped (corrupted, or cut off by an "
                          f"interrupted run); {len(store.incomplete)} unit(s) that lost a record to them will be "
                          "recomputed", stacklevel=3)
        shards = make_plan(config, len(source), frozenset(store.done_units))
        pending = sum(len([u for u in s.units() if u not in s.done]) for s in shards)
        bar = tqdm(total=pending, unit="unit", desc="bench", disable=not progress, dynamic_ncols=True)
        units = 0
        try:
            for rec in get_engine(engine, **(engine_options or {})).run(shards, config):
                store.append(rec)
                if rec.get("type") == "unit":
                    units += 1
                    bar.set_postfix_str(f"{model_label(rec['model'])} {rec['method']}"[:40], refresh=False)
                    bar.update(1)
        finally:
            bar.close()
        written = store.written
    summary = write_report(out, report_config, source.problems)
    return BenchResult(out, summary, written, units, time.perf_counter() - t0)


def _figure_refs(out: Path, records: list[dict[str, Any]], summary: Summary, config: BenchConfig) -> list[FigureRef]:
    """Draw the IoU strip plots and copy the model figures into ``figures/``."""
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    refs = []
    order = {m: i for i, m in enumerate(summary.methods)}
    for model in summary.models:
        maps = [r for r in records if r.get("type") == "map" and r["model"] == model and r.get("iou") is not None
                and r["kind"] in ("top1", "least")]
        which = "correctly classified"
        if any(r["correct"] for r in maps):  # the survey's choice; every image when none is correct
            maps = [r for r in maps if r["correct"]]
        else:
            which = "all (none is correctly classified)"
        if not maps:
            continue
        values: dict[str, dict[str, list[float]]] = {}
        for r in sorted(maps, key=lambda r: order.get(r["method"], len(order))):
            values.setdefault(r["kind"], {}).setdefault(r["method"], []).append(r["iou"])
        png, caption = figs.iou_strip(values, model_label(model), which, seed=config.protocol.seed)
        name = f"iou_{_safe(model)}.png"
        _atomic_write(folder / name, png)
        refs.append(FigureRef(f"{model_label(model)}: IoU of the top and least predicted class", f"figures/{name}", caption))
    titles = {"layers": "Grad-CAM layer by layer", "guided": "Guided Grad-CAM",
              "randomization": "sanity check, cascading parameter randomisation"}
    for r in sorted((r for r in records if r.get("type") == "figure"),
                    key=lambda r: (r["figure"], summary.models.index(r["model"]) if r["model"] in summary.models else 99)):
        if r["figure"] == "randomization" and r.get("curves"):  # drawn here from the record's numbers
            png, caption = figs.randomization_curve(r["curves"], r["layers"], model_label(r["model"]), r["images"])
            if r.get("failed"):
                caption += " No curve (the method cannot run on this model): " + "; ".join(
                    f"{k}: {v}" for k, v in r["failed"].items())
            name = f"randomization_{_safe(r['model'])}.png"
            _atomic_write(folder / name, png)
            refs.append(FigureRef(f"{model_label(r['model'])}: {titles['randomization']}", f"figures/{name}", caption))
        for file in (r.get("files") or {}).values():
            if not (out / file).exists():
                continue
            name = f"{r['figure']}_{_safe(r['model'])}.png"
            shutil.copyfile(out / file, folder / name)
            refs.append(FigureRef(f"{model_label(r['model'])}: {titles.get(r['figure'], r['figure'])}",
                                  f"figures/{name}", r.get("caption", "")))
    return refs


def write_report(out_dir: str | os.PathLike[str], config: Optional[BenchConfig] = None,
                 problems: Optional[dict[str, int]] = None) -> Summary:
    """(Re)write ``table.md``, ``table.csv``, ``figures/`` and ``report.html`` from ``results.jsonl``."""
    out = Path(out_dir)
    run_file = out / RUN_FILE
    if config is None or problems is None:
        if not run_file.exists():
            raise CamkitError(f"{out} is not a camkit run directory (no {RUN_FILE})")
        run = json.loads(run_file.read_text(encoding="utf-8"))
        config = config or BenchConfig.from_dict(run["config"])
        problems = run.get("problems", {}) if problems is None else problems
    records, dropped = read_records(out / RESULTS)
    summary = summarize(records, config, problems)
    summary.verdict = verdict_lines(summary)
    _atomic_write(out / "table.md", markdown(summary))
    _atomic_write(out / "table.csv", csv_text(summary))
    _atomic_write(out / "significance.csv", significance_text(summary))
    refs = _figure_refs(out, records, summary, config)
    info = {
        "data": config.data,
        **({"note": config.note} if config.note else {}),
        "models": ", ".join(model_label(m) for m in summary.models),
        "methods": ", ".join(summary.methods),
        "records": len(records),
        "unreadable lines dropped (their units rerun on resume)": dropped,
        "images skipped (unreadable)": len(summary.skipped),
        "tables": "table.md, table.csv (same numbers, with intervals), significance.csv (tests against the baselines)",
    }
    _atomic_write(out / "report.html", render(summary, records, refs, info))
    return summary


def summary_text(result: BenchResult) -> str:
    """A one-screen summary of a run for the terminal."""
    s = result.summary
    lines = [f"camkit bench: {result.units} units run, {result.written} records written in {result.seconds:.1f} s"]
    for m in s.models:
        acc = s.accuracy(m)
        lines.append(f"  {model_label(m)}: {s.images.get(m, 0)} images, accuracy "
                     f"{'—' if acc is None else f'{acc:.1f} %'}")
    if s.skipped:
        lines.append(f"  unreadable images skipped: {len(s.skipped)}")
    if s.note.startswith(LEFT_OUT):
        lines += [f"  left out {why}" for why in s.note[len(LEFT_OUT):].split("; ")]
    left_out = {k: v for k, v in s.errors.items() if v.startswith(LEFT_OUT)}
    for (model, method), why in sorted(left_out.items()):
        lines.append(f"  {model_label(model)} / {why}")
    if len(s.errors) > len(left_out):
        lines.append(f"  methods that could not run: {len(s.errors) - len(left_out)} (see the report)")
    lines.append(f"  table:  {result.table}")
    lines.append(f"  report: {result.report}")
    lines += ["", "Which map to trust:"] + [f"  {line}" for line in s.verdict[:-1]] + [s.verdict[-1]]
    return "\n".join(lines)

