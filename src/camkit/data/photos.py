"""Real photographs that ship inside installed packages, with ImageNet labels and boxes we drew.

The list lives in ``camkit/data/assets/samples.json``: per photo an ``id``, the ``package`` and the
``path`` inside it, and ``objects`` (ImageNet-1k ``label`` and ``box`` ``[x0, y0, x1, y1]`` in
original pixels, x1/y1 exclusive, one per instance). A photo whose package is not installed is
skipped with a warning.
"""
from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import torch

from camkit.data.imageio import read_image
from camkit.data.sample import Sample

ASSETS = Path(__file__).parent / "assets"


def _package_dir(name: str) -> Path | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return Path(module.__file__).parent  # type: ignore[arg-type]


def _file(photo: dict) -> Path | None:
    root = _package_dir(photo["package"])
    path = root / photo["path"] if root is not None else None
    return path if path is not None and path.is_file() else None


def sample_files() -> dict[str, Path]:
    """Photo id -> its file, for the bundled photos whose package is installed."""
    spec = json.loads((ASSETS / "samples.json").read_text(encoding="utf-8"))["photos"]
    return {p["id"]: f for p in spec if (f := _file(p)) is not None}


def samples(ids: list[str] | None = None) -> list[Sample]:
    """The bundled photos (all, or those named in ``ids``) as `Sample` objects."""
    spec = json.loads((ASSETS / "samples.json").read_text(encoding="utf-8"))["photos"]
    if ids is not None:
        known = {p["id"] for p in spec}
        unknown = sorted(set(ids) - known)
        if unknown:
            raise KeyError(f"unknown photo ids {unknown}; known: {sorted(known)}")
        spec = [p for p in spec if p["id"] in ids]
    out: list[Sample] = []
    missing: dict[str, list[str]] = {}
    for photo in spec:
        path = _file(photo)
        if path is None:
            missing.setdefault(photo["package"], []).append(photo["id"])
            continue
        labels = [int(o["label"]) for o in photo["objects"]]
        distinct = sorted(set(labels))
        out.append(Sample(
            image=read_image(path),
            label=distinct[0] if len(distinct) == 1 else distinct,
            boxes=torch.tensor([o["box"] for o in photo["objects"]], dtype=torch.float32),
            id=photo["id"],
            box_labels=torch.tensor(labels, dtype=torch.long),
        ))
    for package, names in missing.items():
        warnings.warn(f"photos {names} skipped: package {package!r} (or its file) is not installed", stacklevel=2)
    return out
