"""``camkit list`` (the methods with their cost, models, datasets and engines there are) and
``camkit train-digits`` (the bundled digits models trained again; the trainer's own options)."""
from __future__ import annotations

import argparse
from typing import Any

import camkit
from camkit.bench import DATASETS, list_engines
from camkit.methods import get


def add_list_parser(sub: Any) -> None:
    """Register ``camkit list`` on the subcommands ``sub``."""
    ls = sub.add_parser("list", help="methods (with their cost), models, datasets and engines")
    ls.set_defaults(func=cmd_list)


def add_train_digits_parser(sub: Any) -> None:
    """Register ``camkit train-digits`` on the subcommands ``sub``, with the trainer's options."""
    from camkit.models.train_digits import add_arguments

    t = sub.add_parser("train-digits", help="train the bundled digits models again",
                       description="Train the digits models on the generated digits set (CPU, minutes) and save "
                       "their weights (by default over the bundled ones).")
    add_arguments(t)
    t.set_defaults(func=cmd_train_digits)


def method_line(name: str) -> str:
    """One method as ``camkit list`` prints it: name, cost, and what sets it apart (output kind, expensive)."""
    cls = get(name)
    notes = [n for n, on in (("a signed attribution, not a map: camkit bench leaves it out", cls.output == "attribution"),
                             ("expensive: the demo's photo run leaves it out", cls.expensive)) if on]
    return f"  {name:<17} {cls.cost}" + (f" [{'; '.join(notes)}]" if notes else "")


def cmd_list(args: argparse.Namespace) -> int:
    """``camkit list``: the methods one a line with their cost; models, prefixes, datasets, engines."""
    print("methods:  (each with the cost of one explanation, in passes of the model)")
    for name in camkit.list_methods():
        print(method_line(name))
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
    print("layers of a model: camkit layers MODEL")
    return 0


def cmd_train_digits(args: argparse.Namespace) -> int:
    """``camkit train-digits``: train the named digits models and save their weights."""
    from camkit.models.train_digits import run

    run(args)
    return 0
