"""The library's messages speak Python (``layer='name'``, ``weights=None``, ``min_score``); the command
speaks flags. `to_cli` rewrites the phrasings that messages reachable from a command use into
that command's flags (``--layer NAME``, ``--weights random``, ``--min-score``); `cli_warnings`
prints the library's warnings as one ``camkit COMMAND: warning:`` line each, rewritten the same way.

Each rule names a phrasing the library really uses (``tests/test_cli_messages.py`` drives the
commands into messages and checks that no Python phrasing is left).
"""
from __future__ import annotations

import argparse
import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

from .common import warn

#: (pattern, replacement), tried in order; the replacement's ``{0}`` is the pattern's group,
#: ``{model}`` the command's model and ``{weights}`` how it takes weights (``--weights `` or ``--models NAME=``)
_RULES: list[tuple[str, str]] = [
    (r"\(see \[n for n, _ in model\.named_modules\(\)\] for all (\d+) names, or use layer='auto'\)",
     "(camkit layers {model} lists all {0} with their output shapes; leave out --layer for the automatic choice)"),
    (r"pass layer='name' or a list of them", "pass --layer NAME, or several comma-separated (camkit layers {model} "
     "lists them)"),
    (r"pass layer='name'", "pass --layer NAME (camkit layers {model} lists them)"),
    (r"\(layer='auto' picks (it|one)\)", "(leaving out --layer picks {0})"),
    (r"pass layer= ", "pass --layer "),
    (r"use layer='auto'", "leave out --layer"),
    (r"weights=PATH", "{weights}PATH"),
    (r"weights='([^']*)'", "{weights}{0}"),
    (r"weights=None", "{weights}random"),
    (r"None \(random\)", "random"),
    (r"lower min_score", "lower --min-score"),
    (r"layout='(\w+)'", "--layout {0}"),
    (r"precision='(\w+)' or '(\w+)' on CPU, or '(\w+)' on", "--precision {0} or {1} on CPU, or {2} on"),
    (r"precision='(\w+)'", "--precision {0}"),
    (r"pass reshape=callable\(tensor\)", "from Python, pass reshape=callable(tensor)"),
    (r"[Pp]ass targets=callable\(output\)", "from Python, pass targets=callable(output)"),
]


def to_cli(message: str, args: argparse.Namespace | None = None) -> str:
    """``message`` with the library's Python phrasings replaced by the flags of ``args``'s command."""
    model = getattr(args, "model", None) or "MODEL"
    weights = "--weights " if args is None or hasattr(args, "weights") else "--models NAME="
    for pattern, template in _RULES:
        message = re.sub(pattern, lambda m, t=template: t.format(*m.groups(), model=model, weights=weights), message)
    return message


@contextlib.contextmanager
def cli_warnings(command: str, args: argparse.Namespace | None = None) -> Iterator[None]:
    """Inside: the library's warnings print as ``camkit COMMAND: warning: ...`` (flags, no source line)."""
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        warn(command, to_cli(str(message), args))

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
