"""``camkit docs``: build this documentation site and serve it on 127.0.0.1 (``mkdocs serve``), or
build it into a directory, or say how when it cannot (no clone with ``mkdocs.yml``, no docs extra)."""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from camkit.errors import InputError

INSTALL = 'pip install -e ".[docs]"'


def add_parser(sub: Any) -> None:
    """Register ``camkit docs`` on the subcommands ``sub``."""
    d = sub.add_parser("docs", help="build this documentation site and serve it on 127.0.0.1",
                       description="Build the documentation site (every page's code runs while it builds, offline: "
                       "a few minutes) and serve it on 127.0.0.1 with mkdocs, rebuilding pages as they change. "
                       f"Needs a clone of camkit (mkdocs.yml) and the docs extra: {INSTALL}.")
    d.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000)")
    d.add_argument("--build", metavar="DIR", type=Path, default=None,
                   help="only build the site into DIR (strict: a broken link or a failing example fails)")
    d.add_argument("--config", type=Path, default=None,
                   help="the site's mkdocs.yml (default: the one of the clone camkit runs from, else ./mkdocs.yml)")
    d.add_argument("--print", dest="print_only", action="store_true", help="print the command, run nothing")
    d.set_defaults(func=cmd_docs)


def find_config(given: Optional[Path] = None) -> Optional[Path]:
    """The site's ``mkdocs.yml``: ``given``, else the clone's that holds this camkit (``src/camkit``),
    else the current directory's; None when there is none."""
    if given is not None:
        return given if given.is_file() else None
    here = Path(__file__).resolve().parents[3] / "mkdocs.yml"  # <clone>/src/camkit/cli/docs.py
    for candidate in (here, Path.cwd() / "mkdocs.yml"):
        if candidate.is_file():
            return candidate
    return None


def docs_command(config: Path, build: Optional[Path], port: int) -> list[str]:
    """The mkdocs command line: a strict build into ``build``, or a server on 127.0.0.1:``port``."""
    if build is not None:
        return [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(build.resolve())]
    return [sys.executable, "-m", "mkdocs", "serve", "-f", str(config), "-a", f"127.0.0.1:{port}"]


def cmd_docs(args: argparse.Namespace) -> int:
    """Run (or print) the build / serve command; its exit status is the command's."""
    config = find_config(args.config)
    if config is None:
        raise InputError("no mkdocs.yml here: the documentation is built from a clone of camkit "
                         f"(git clone ...; cd camkit; {INSTALL}; camkit docs), or pass --config PATH/mkdocs.yml")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    command = docs_command(config, args.build, args.port)
    shown = " ".join(command)
    if args.print_only:
        print(f"cd {config.parent} && {shown}")
        return 0
    missing = [m for m in ("mkdocs", "material", "mkdocstrings") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"camkit docs needs {', '.join(missing)}: {INSTALL}; then: {shown}")
    where = f"into {args.build}" if args.build is not None else f"and serving it on http://127.0.0.1:{args.port}/"
    print(f"camkit docs: building the site {where} (every page's code runs: a few minutes)", flush=True)
    return subprocess.call(command, cwd=config.parent)
