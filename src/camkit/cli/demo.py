"""``camkit demo``: the whole benchmark on the bundled photos and digits, offline."""
from __future__ import annotations

import argparse
from typing import Any

from camkit.bench import summary_text
from camkit.bench.demo import demo_parts, run_demo

from .common import add_device_options


def add_parser(sub: Any) -> None:
    """Register ``camkit demo`` on the subcommands ``sub``."""
    d = sub.add_parser("demo", help="the whole benchmark on bundled photos and digits, offline",
                       description="EfficientNet-Lite0 on the bundled real photos and the three digits models on "
                       "a generated digits split, every method the tables hold (expensive ones with --include-expensive); "
                       "a few minutes on a laptop CPU.")
    d.add_argument("-o", "--output", default="camkit-demo", help="output directory (default: camkit-demo)")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="continue an earlier demo")
    d.add_argument("--include-expensive", action="store_true",
                   help="also run the expensive methods (Score-CAM, SS-CAM, IS-CAM, SESS): much longer")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_device_options(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``camkit demo``: run (or resume) the demo, print each part's summary and where the report is."""
    demo = run_demo(args.output, progress=not args.quiet, resume=args.resume,
                    parts=demo_parts(include_expensive=args.include_expensive))
    for result in demo.results:
        print(summary_text(result))
    print(f"camkit demo: report at {demo.index} (tables: {demo.index.parent / 'table.md'})")
    return 0
