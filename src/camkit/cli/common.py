"""What the subcommands share: comma lists, ``--threads``, ``--precision``, file stems, warnings, and
the option groups several subcommands take (``--device``/``--threads``, ``--precision``/``--channels-last``)."""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import CamkitError


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def set_threads(spec: Optional[str]) -> None:
    """``--threads``: a number, or ``auto`` -- torch's default, unless the CPUs are already busy (load
    average >= cores - 0.5), then 1: several threads on busy cores wait for each other at every
    operation (measured here: 2 threads 2-5x slower than 1 under a load of 5 on 2 cores)."""
    if spec is None:
        return
    import torch

    if spec == "auto":
        cores = os.cpu_count() or 1
        busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores - 0.5
        if busy and cores > 1:
            torch.set_num_threads(1)
        return
    try:
        n = int(spec)
    except ValueError:
        raise SystemExit(f"camkit: error: --threads must be a number or 'auto', got {spec!r}") from None
    if n < 1:
        raise SystemExit(f"camkit: error: --threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def checked_precision(args: argparse.Namespace) -> str:
    """``--precision``, checked against ``--device`` before anything runs."""
    import torch

    from camkit.core.precision import check_available, parse_precision

    precision = parse_precision(args.precision)
    check_available(precision, torch.device(args.device))
    return precision


def stem(path: str) -> str:
    """An image path's stem, safe as the start of an output file name (``image`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("._") or "image"


def model_options(pairs: Optional[Sequence[str]]) -> tuple[tuple[str, Any], ...]:
    """``--model-option KEY=VALUE`` (repeated) as ``(key, value)`` pairs for the model's builder; values are
    Python literals where they parse (``3``, ``True``, ``(6, 12)``), else strings."""
    out = []
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise CamkitError(f"--model-option takes KEY=VALUE (e.g. spatial_dims=3), got {pair!r}")
        try:
            parsed: Any = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()
        out.append((key.strip(), parsed))
    return tuple(out)


def model_spec(args: argparse.Namespace) -> str:
    """``--model`` and ``--weights`` as one model spec, ``NAME`` or ``NAME=WEIGHTS``."""
    return args.model if args.weights is None else f"{args.model}={args.weights}"


def warn(command: str, text: str) -> None:
    """A one-line warning of ``camkit COMMAND`` on stderr."""
    print(f"camkit {command}: warning: {text}", file=sys.stderr)


def add_forward_options(sp: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--channels-last``: how the methods run the model's forward."""
    sp.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="the methods' model forward under autocast in this precision; maps stay float32 "
                    "(default: fp32; fp16 needs a GPU or a CPU with AMX-FP16)")
    sp.add_argument("--channels-last", action="store_true",
                    help="run the methods' model forward in channels-last memory format")


def add_device_options(sp: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``: where the model runs."""
    sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    sp.add_argument("--threads", default="auto", help="torch CPU threads: a number, or auto (default): "
                    "torch's choice, 1 when the CPUs are already busy")
