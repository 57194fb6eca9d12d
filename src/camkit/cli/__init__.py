"""The ``camkit`` command: thin argument parsing over the library.

    camkit explain IMAGE... --model NAME [--method gradcam[,layercam]] [-o DIR]
    camkit explain clip.mp4 --model torchvision:r3d_18     (scan.nii.gz with a volume model)
    camkit layers MODEL [--size H W]
    camkit bench --models A,B --methods all --data digits --limit 100 -o DIR
    camkit recommend --model NAME [--data digits] [--limit 32]
    camkit demo [-o DIR]
    camkit report DIR
    camkit list
    camkit train-digits [names...]
    camkit serve --models efficientnet_lite0,digits_resnet [--port 8000]
    camkit docs [--port 8000] [--build DIR]

Exit status: 0 on success, 1 on an error (a one-line message in the command's flags, no traceback
unless ``--debug``), 130 when interrupted (a bench can be resumed by running the same command again),
141 when the reader of its output went away (``camkit list | head``).

Modules, one subcommand (or a close pair) each, every one owning its parser and its ``cmd_*``:
`.explain` (``explain``, ``--task classify|detect|segment``), `.explain3d` (``explain`` on
videos and NIfTI volumes), `.bench` (``bench``, ``report``),
`.recommend` (``recommend``: a small bench and its verdict), `.demo`, `.serve`, `.docs` (``docs``: build and serve this site), `.catalog` (``list``, ``train-digits``), `.layers` (``layers``),
`.common` (helpers and option groups they share), `.phrasing` (the library's messages in the
command's flags). This module only assembles them and runs one.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from camkit import __version__
from camkit.errors import CamkitError

from . import bench, catalog, demo, docs, explain, layers, recommend, serve
from .common import set_threads
from .phrasing import cli_warnings, to_cli

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``camkit`` parser: global options, then each subcommand's own parser, in help order."""
    p = argparse.ArgumentParser(prog="camkit", description="Class Activation Maps for PyTorch vision models, "
                                "and the metrics that say which to trust.")
    p.add_argument("--version", action="version", version=f"camkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    explain.add_parser(sub)
    layers.add_parser(sub)
    bench.add_bench_parser(sub)
    recommend.add_parser(sub)
    demo.add_parser(sub)
    bench.add_report_parser(sub)
    catalog.add_list_parser(sub)
    serve.add_parser(sub)
    catalog.add_train_digits_parser(sub)
    docs.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``camkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        with cli_warnings(args.command, args):
            return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader left (`camkit list | head`): stop quietly, as other tools do
        _quiet_stdout()
        return 141
    except KeyboardInterrupt:
        print("\ncamkit: interrupted; rerun the same command to resume a bench", file=sys.stderr)
        return 130
    except Exception as exc:  # one readable line; --debug for the traceback
        if args.debug or os.environ.get("CAMKIT_DEBUG"):
            raise
        kind = "" if isinstance(exc, CamkitError) else f"{type(exc).__name__}: "
        print(f"camkit {args.command}: error: {kind}{to_cli(str(exc), args)}", file=sys.stderr)
        return 1


def _quiet_stdout() -> None:
    """Point stdout at the null device, so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured by a test)
        pass

