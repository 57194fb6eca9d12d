"""Models and datasets by name, as the command line and the run configuration spell them.

Model specs: ``name`` (the zoo's default weights) or ``name=weights`` where weights is a named set
(``imagenet``, ``bundled``), ``random`` (no weights) or a state-dict path; names may carry a prefix
(``timm:NAME=ckpt.pth``, ``torchvision:NAME=file.pth``, ``hf:DIR``; see `parse_model_spec`). Data specs: ``samples``
(the bundled photos), ``digits`` / ``digits:N`` (N generated images, default 100, test split,
seed 1), ``moving_digits[:N]`` / ``digit_volumes[:N]`` (generated clips / volumes, the same defaults), ``imagenet:PATH`` (ILSVRC validation images + VOC XML) and ``folder:PATH`` (a folder with
``boxes.json`` or ``boxes.csv``, or the path of that file). Both are loaded once per process.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import CamkitError

#: the `--data` forms a bench takes -> what each is
DATASETS = {
    "samples": "the bundled real photos (scikit-image, matplotlib, scikit-learn) with ImageNet labels and boxes",
    "digits[:N]": "N generated 64x64 digits images with exact boxes (default 100; test split, seed 1)",
    "moving_digits[:N]": "N generated clips (8 x 32 x 32) of a moving digit, a box per frame (default 100; test split, seed 1)",
    "digit_volumes[:N]": "N generated volumes (32^3) of an extruded digit with exact 3-D boxes (default 100; test split, seed 1)",
    "imagenet:PATH": "ImageNet validation images and Pascal-VOC XML boxes under PATH",
    "folder:PATH": "images under PATH with PATH/boxes.json or boxes.csv (or PATH = that file)",
}
DIGITS_DEFAULT_N = 100
BOXES_FILES = ("boxes.json", "boxes.csv", "annotations.json", "annotations.csv")
DIGITS_SEED = 1
GENERATED = ("digits", "moving_digits", "digit_volumes")  # data specs NAME[:N]: camkit.data.NAME(N, ...)


_RANDOM = ("random", "none")


def parse_model_spec(spec: str) -> tuple[str, Any]:
    """``"name[=weights]"`` -> ``(name, weights)`` with ``"default"`` or None (random) or the string.

    Names never contain ``=``, so the first one splits (weights paths may hold ``=`` and ``:``, e.g.
    ``timm:vit_small_patch16_224=C:\\ckpt.pth``). ``hf:DIR`` takes its weights from DIR, which may
    itself hold ``=``: only ``hf:DIR=random`` splits.
    """
    spec = spec.strip()
    prefix, colon, rest = spec.partition(":")
    if colon and prefix.strip().lower() == "hf":
        left, eq, right = spec.rpartition("=")
        if eq and right.strip().lower() in _RANDOM and not Path(rest).expanduser().is_dir():
            return left.strip(), None
        return spec, "default"
    name, eq, weights = spec.partition("=")
    name, weights = name.strip(), weights.strip()
    if not name:
        raise CamkitError(f"empty model name in {spec!r}")
    if eq and not weights:
        raise CamkitError(f"{spec!r}: nothing after '='; write NAME alone, NAME=PATH or NAME=random")
    if not eq:
        return name, "default"
    return name, None if weights.lower() in _RANDOM else weights


def random_weights(spec: str) -> bool:
    """Whether model ``spec`` runs with randomly initialised weights (``name=random``, or a zoo model
    without default weights given none): its maps and predictions say nothing about a trained model."""
    from ..models.zoo import default_weights

    name, weights = parse_model_spec(spec)
    try:
        return weights is None or (weights == "default" and default_weights(name) is None)
    except CamkitError:  # an unknown name: loading it reports that
        return False


def random_weights_warning(spec: str) -> str:
    """The warning for a model that runs with random weights (see `random_weights`), with advice
    that works here: ``imagenet`` only where torchvision's file is in the cache, else a state-dict file
    or a zoo model that ships real weights."""
    name, weights = parse_model_spec(spec)
    if weights is None:
        return f"{name} runs with random weights, as asked: its predictions and maps say nothing about a trained {name}"
    return (f"{name} runs with RANDOM weights, none were given: its predictions and maps say nothing about a "
            f"trained {name}; {_weights_advice(name)}")


def _weights_advice(name: str) -> str:
    """What to give instead of no weights, for model ``name``: only advice that loads here."""
    from ..models.zoo import named_weights_file

    try:
        cached = named_weights_file(name, "imagenet")
    except (CamkitError, OSError, KeyError):
        cached = None
    with_file = f"explain --weights FILE, bench --models {name}=FILE"
    if cached is not None:
        return f"give weights 'imagenet' (torchvision's file, found at {cached}) or a state-dict file ({with_file})"
    return (f"give a state-dict file ({with_file}); efficientnet_lite0 and the digits models ship with real weights "
            "(camkit list)")


@functools.lru_cache(maxsize=8)
def load_model(spec: str, device: str = "cpu", options: tuple[tuple[str, Any], ...] = ()) -> nn.Module:
    """The zoo model of ``spec`` in eval mode on ``device`` (cached per process); ``options`` the builder's
    keyword options as ``(key, value)`` pairs (``monai:densenet121`` with ``(("in_channels", 1),)``)."""
    from .. import models

    name, weights = parse_model_spec(spec)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # "randomly initialised" is what name=random asks for
        torch.manual_seed(0)  # random weights are the same in every process (local, Ray workers)
        model = models.load(name, weights=weights, **dict(options))
    return model.to(torch.device(device)).eval()


def model_label(spec: str) -> str:
    """The model's display name: the zoo name, plus the weights when they were given."""
    name, weights = parse_model_spec(spec)
    if random_weights(spec):
        return f"{name} (random)"
    if weights == "default":
        return name
    return f"{name} ({Path(str(weights)).name})"


@dataclass
class Source:
    """A dataset addressed by index: ``len``, ``ids`` and ``load(i)`` (raises ``OSError`` when the
    image cannot be read), plus the loader's own problem counts (missing files, bad records)."""

    dataset: Sequence[Any]
    ids: list[str]
    problems: dict[str, int]
    categories: Optional[list[str]]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Any:
        return self.dataset[i]


def _folder(path: Path) -> Any:
    from ..data import folder

    if path.is_file():
        return folder(path.parent, path)
    for name in BOXES_FILES:
        if (path / name).is_file():
            return folder(path, path / name)
    if not any(p.is_file() for p in path.rglob("*")):
        raise CamkitError(f"no images were found: the folder {str(path)!r} is empty (camkit looks there for the "
                          f"images and a {' or '.join(BOXES_FILES[:2])} that lists them with their boxes)")
    raise CamkitError(f"folder dataset {str(path)!r}: no {' or '.join(BOXES_FILES[:2])} in it (or give the file's path)")


def _where(kind: str, arg: str) -> str:
    """Where a data spec looked for images, for the error when it found none."""
    if kind in GENERATED:
        return f"{kind}:{arg} asks for {arg} generated items; use {kind}:N with N >= 1"
    if kind == "folder":
        return f"camkit looked for the images that the boxes file in {arg!r} lists, relative to its folder"
    if kind == "imagenet":
        return f"camkit looked under {arg!r} for images with a Pascal-VOC XML file of the same name"
    return f"data {kind!r}"


@functools.lru_cache(maxsize=4)
def load_source(spec: str) -> Source:
    """The dataset of ``spec`` (see the module docstring), cached per process."""
    from .. import data

    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "samples":
        ds: Any = data.samples()
    elif kind in GENERATED:
        try:
            n = int(arg) if arg else DIGITS_DEFAULT_N
        except ValueError:
            raise CamkitError(f"{kind} takes a number of items, {kind}:N; got {spec!r}") from None
        ds = getattr(data, kind)(n, seed=DIGITS_SEED, split="test")
    elif kind in ("imagenet", "folder"):
        if not arg:
            raise CamkitError(f"{kind} needs a path: {kind}:PATH")
        path = Path(arg).expanduser()
        if not path.exists():
            raise CamkitError(f"{kind} dataset path {str(path)!r} does not exist")
        ds = data.imagenet(path) if kind == "imagenet" else _folder(path)
    else:
        raise CamkitError(f"unknown data {spec!r}; use one of: {', '.join(DATASETS)}")
    records = getattr(ds, "records", None)
    if records is not None:  # decoded lazily: ids without reading the images
        ids = [r.id for r in records]
    else:
        ids = [ds[i].id for i in range(len(ds))]
    if len(set(ids)) != len(ids):
        raise CamkitError(f"data {spec!r} has duplicate image ids; every image needs a unique id")
    problems = dict(getattr(ds, "problems", {}) or {})
    if not ids:
        left_out = f"; left out: {', '.join(f'{k}: {v}' for k, v in sorted(problems.items()))}" if problems else ""
        raise CamkitError(f"no images were found for --data {spec}: {_where(kind, arg)}{left_out}")
    return Source(ds, ids, problems, getattr(ds, "categories", None))
