"""``camkit recommend --model M --data D``: a small benchmark of one model, ending with which map to trust."""
from __future__ import annotations

import argparse
from typing import Any

from camkit.bench import BenchConfig, Protocol, run_bench
from camkit.bench.plan import LEFT_OUT
from camkit.bench.sources import random_weights, random_weights_warning

from .bench import chosen_methods
from .common import add_device_options, warn


def add_parser(sub: Any) -> None:
    """Register ``camkit recommend`` on the subcommands ``sub``."""
    r = sub.add_parser("recommend", help="which map to trust for a model: a small bench, then the verdict",
                       description="Run every method the classification tables hold (and the baseline maps) on the "
                       "first --limit images of --data, then print the verdict: the methods whose maps change "
                       "when the model is randomised and that beat every baseline on ROAD combined, ranked.")
    r.add_argument("--model", required=True, help="a zoo name (or timm:NAME, hf:DIR, torchvision:NAME), optionally NAME=WEIGHTS")
    r.add_argument("--data", default="digits", help="samples | digits[:N] | imagenet:PATH | folder:PATH (default: digits)")
    r.add_argument("--limit", type=int, default=32, help="images (default: 32; more images separate more methods)")
    r.add_argument("--methods", default="all", help="'all' (default) or comma-separated method names")
    r.add_argument("--include-expensive", action="store_true", help="also run the expensive methods")
    r.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    r.add_argument("-o", "--output", default="camkit-recommend", help="run directory (default: camkit-recommend)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_device_options(r)
    r.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    """``camkit recommend``: run (or resume) the small bench and print the verdict with its rule."""
    methods, note = chosen_methods(args)
    if random_weights(args.model):
        warn("recommend", random_weights_warning(args.model))
    config = BenchConfig(models=(args.model,), methods=methods, data=args.data, limit=args.limit,
                         batch_size=args.batch_size, device=args.device, gallery_images=0, figure_images=0,
                         protocol=Protocol(perturbation_steps=16), note=note)
    result = run_bench(config, args.output, resume=True, progress=not args.quiet)
    s = result.summary
    left = [f"  left out {why}" for why in note[len(LEFT_OUT):].split("; ")] if note else []
    left += [f"  {why}" for (_, method), why in sorted(s.errors.items())]
    print("\n".join(["Which map to trust:"] + [f"  {line}" for line in s.verdict[:-1]] + [s.verdict[-1]]
                    + (["Not in the tables:"] + left if left else []) + [f"Tables and report: {result.report}"]))
    return 0
