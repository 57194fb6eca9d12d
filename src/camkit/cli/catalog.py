"""``camkit list`` (the methods, models, datasets and engines there are) and ``camkit train-digits``
(the bundled digits models trained again; its own arguments)."""
from __future__ import annotations

import argparse
from typing import Any

import camkit
from camkit.bench import DATASETS, list_engines


def add_list_parser(sub: Any) -> None:
    """Register ``camkit list`` on the subcommands ``sub``."""
    ls = sub.add_parser("list", help="methods, models, datasets and engines")
    ls.set_defaults(func=cmd_list)


def add_train_digits_parser(sub: Any) -> None:
    """Register ``camkit train-digits`` on the subcommands ``sub``: everything after it goes to the trainer."""
    t = sub.add_parser("train-digits", help="train the bundled digits models (see its --help)", add_help=False)
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_train_digits)


def cmd_list(args: argparse.Namespace) -> int:
    """``camkit list``: one line per kind, model prefixes and datasets with their usage."""
    print("methods:  " + ", ".join(camkit.list_methods()))
    metas = [n for n in camkit.list_methods() if getattr(camkit.methods.get(n), "meta", False)]
    print(f"  {'META:BASE':<17} {', '.join(metas)} around another method, e.g. sess:gradcam++")
    print("models:   " + ", ".join(camkit.models.list_models()))
    for _module, _function, usage in camkit.models.PREFIXES.values():
        name, text = usage.split("  ", 1)
        print(f"  {name:<17} {text}")
    print("datasets:")
    for name, text in DATASETS.items():
        print(f"  {name:<17} {text}")
    print("engines:  " + ", ".join(list_engines()))
    return 0


def cmd_train_digits(args: argparse.Namespace) -> int:
    """``camkit train-digits``: hand the remaining arguments to the digits trainer."""
    from camkit.models.train_digits import main as train_main

    train_main(args.rest)
    return 0
