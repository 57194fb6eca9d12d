"""``camkit bench`` (methods x models x data -> records, tables, figures, HTML report; resumable) and
``camkit report`` (the tables and report of a run directory rewritten from its records)."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from camkit.bench import BenchConfig, Protocol, list_engines, run_bench, summary_text, write_report
from camkit.bench.lock import directory_lock
from camkit.bench.plan import LEFT_OUT, select_methods
from camkit.bench.sources import random_weights, random_weights_warning
from camkit.errors import CamkitError

from .common import add_device_options, add_forward_options, checked_precision, csv_list, warn

DEFAULT_OUT = "camkit-report"


def _add_run_options(b: argparse.ArgumentParser) -> None:
    """What runs, and where its records go."""
    b.add_argument("--models", required=True, help="comma-separated zoo names (or timm:NAME, hf:DIR, torchvision:NAME), "
                   "each optionally NAME=WEIGHTS")
    b.add_argument("--methods", default="all", help="'all' or comma-separated method names (default: all: every "
                   "method the classification tables hold, expensive ones only with --include-expensive)")
    b.add_argument("--include-expensive", action="store_true",
                   help="with --methods all: also run the expensive methods (Score-CAM, SS-CAM, IS-CAM, SESS)")
    b.add_argument("--data", default="digits", help="samples | digits[:N] | imagenet:PATH | folder:PATH")
    b.add_argument("--limit", type=int, default=None, help="use the first N images")
    b.add_argument("--batch-size", type=int, default=8, help="images per shard and batch (default: 8)")
    b.add_argument("-o", "--output", default=DEFAULT_OUT, help=f"run directory (default: {DEFAULT_OUT})")
    b.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a run in OUTPUT (default); --no-resume refuses a directory with results")
    b.add_argument("--engine", default="local", choices=list_engines(), help="where shards run (default: local)")


def _add_ray_options(b: argparse.ArgumentParser) -> None:
    """``--engine ray``'s cluster and workers."""
    b.add_argument("--address", default=None,
                   help="with --engine ray: 'auto' (this machine's cluster), HOST:PORT (a head), ray://HOST:PORT, "
                   "or none for a fresh local Ray")
    b.add_argument("--num-workers", type=int, default=None, help="with --engine ray: shards in flight (default: cluster CPUs)")
    b.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per task (use with --device cuda)")


def _add_protocol_options(b: argparse.ArgumentParser) -> None:
    """How the metrics are measured, and what the report shows."""
    b.add_argument("--threshold", type=float, default=None, help="box threshold, fraction of the map max (0.15)")
    b.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (32)")
    b.add_argument("--scorecam-batch", type=int, default=None, help="Score-CAM masked inputs per pass")
    b.add_argument("--no-baselines", action="store_true", help="leave out the uniform/Gaussian/random baselines")
    b.add_argument("--gallery", type=int, default=12, help="images whose overlays go to the galleries (12)")


def add_bench_parser(sub: Any) -> None:
    """Register ``camkit bench`` on the subcommands ``sub``."""
    b = sub.add_parser("bench", help="methods x models x data -> tables, figures, HTML report",
                       description="Run the benchmark; rerun the same command to resume an interrupted run.")
    _add_run_options(b)
    _add_ray_options(b)
    _add_protocol_options(b)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_forward_options(b)
    add_device_options(b)
    b.set_defaults(func=cmd_bench)


def add_report_parser(sub: Any) -> None:
    """Register ``camkit report`` on the subcommands ``sub``."""
    r = sub.add_parser("report", help="rewrite the tables and report of a run directory from its results")
    r.add_argument("directory")
    r.set_defaults(func=cmd_report)


def _protocol(args: argparse.Namespace) -> Protocol:
    """The measuring protocol: the library's defaults, overridden by the options given."""
    kw: dict[str, Any] = {}
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.steps is not None:
        kw["perturbation_steps"] = args.steps
    if args.no_baselines:
        kw["baselines"] = ()
    if args.scorecam_batch is not None:
        kw["method_options"] = {"scorecam": {"batch_size": args.scorecam_batch}}
    return Protocol(precision=checked_precision(args), channels_last=args.channels_last, **kw)


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Ray options for ``--engine ray``; an error when they are given to another engine."""
    if args.engine == "ray":
        return {"address": args.address, "num_workers": args.num_workers, "gpus_per_worker": args.gpus_per_worker}
    if (args.address, args.num_workers, args.gpus_per_worker) != (None, None, 0.0):
        raise CamkitError("--address, --num-workers and --gpus-per-worker need --engine ray")
    return {}


def chosen_methods(args: argparse.Namespace) -> tuple[tuple[str, ...], str]:
    """The methods to run and the note for the report: each method ``--methods all`` leaves out and why
    (the summary prints them after the run)."""
    methods, left_out = select_methods(args.methods, args.include_expensive)
    return methods, (LEFT_OUT + "; ".join(left_out)) if left_out else ""


def cmd_bench(args: argparse.Namespace) -> int:
    """``camkit bench``: run (or resume) the benchmark, print its summary, ending with the verdict."""
    methods, note = chosen_methods(args)
    config = BenchConfig(
        models=tuple(csv_list(args.models)), methods=methods, data=args.data, limit=args.limit,
        batch_size=args.batch_size, device=args.device, protocol=_protocol(args), gallery_images=args.gallery,
        note=note,
    )
    engine_options = _engine_options(args)
    for spec in config.models:
        if random_weights(spec):
            warn("bench", random_weights_warning(spec))
    result = run_bench(config, args.output, resume=args.resume, engine=args.engine, progress=not args.quiet,
                       engine_options=engine_options)
    print(summary_text(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``camkit report``: rewrite a run directory's tables and report."""
    folder = Path(args.directory)
    with directory_lock(folder) if folder.is_dir() else contextlib.nullcontext():  # a missing one: write_report says so
        write_report(folder)
    print(f"camkit report: {Path(args.directory) / 'report.html'}")
    return 0
