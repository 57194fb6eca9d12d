"""Any folder of images plus a JSON or CSV file of labels and boxes.

JSON (``boxes_file`` ending in ``.json``)::

    {"categories": ["cat", "dog"],                       # optional: names by class index
     "images": [{"file": "a.jpg",                        # path relative to root
                 "label": 1,                             # int, class name, or a list of them
                 "boxes": [[x0, y0, x1, y1], ...],       # pixels, x1/y1 exclusive; may be []
                 "box_labels": [1, ...]}]}               # optional, one per box; default: label

(a bare list of image records is accepted too). CSV (``.csv``) has a header
``file,label,x0,y0,x1,y1`` and one row per box; an image without boxes has one row with empty
coordinates; the image's label is the set of its rows' labels. Labels that are names are mapped
through ``categories`` (the JSON's list, the ``categories`` argument, or the sorted set of names
found). Records naming missing files, or with malformed boxes, are counted in ``problems``.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from camkit.data.files import AnnotatedFiles, Record


def _read_json(path: Path) -> tuple[list[dict[str, Any]], list[str] | None]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        return data, None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a list of image records or {{'images': [...]}}")
    return data["images"], data.get("categories")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    grouped: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"file", "label", "x0", "y0", "x1", "y1"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise ValueError(f"{path}: the CSV header must contain {sorted(needed)}, got {reader.fieldnames}")
        for row in reader:
            rec = grouped.setdefault(row["file"], {"file": row["file"], "label": [], "boxes": [], "box_labels": []})
            label = row["label"].strip()
            coords = [row[k].strip() for k in ("x0", "y0", "x1", "y1")]
            if label not in rec["label"]:
                rec["label"].append(label)
            if any(coords):
                rec["boxes"].append(coords)
                rec["box_labels"].append(label)
    return list(grouped.values())


def folder(root: str | os.PathLike[str], boxes_file: str | os.PathLike[str],
           categories: list[str] | None = None) -> AnnotatedFiles:
    """Images under ``root`` annotated by ``boxes_file`` (format in the module docstring)."""
    root, boxes_file = Path(root), Path(boxes_file)
    if not boxes_file.is_file():
        raise FileNotFoundError(f"boxes file {str(boxes_file)!r} does not exist")
    suffix = boxes_file.suffix.lower()
    if suffix == ".json":
        entries, file_categories = _read_json(boxes_file)
        categories = categories or file_categories
    elif suffix == ".csv":
        entries = _read_csv(boxes_file)
    else:
        raise ValueError(f"boxes file must end in .json or .csv, got {boxes_file.name!r}")

    def as_list(v: Any) -> list[Any]:
        return list(v) if isinstance(v, (list, tuple)) else [v]

    names = sorted({str(x) for e in entries for x in as_list(e.get("label")) if not _is_int(x)})
    if categories is None and names:
        categories = names
    lookup = {c: i for i, c in enumerate(categories or [])}
    problems: Counter[str] = Counter()
    records: list[Record] = []
    for entry in entries:
        try:
            labels = [_label(x, lookup) for x in as_list(entry["label"])]
            boxes = [tuple(float(v) for v in b) for b in entry.get("boxes", [])]
            box_labels = [_label(x, lookup) for x in entry.get("box_labels", [])] or [labels[0]] * len(boxes)
            if any(len(b) != 4 or b[2] <= b[0] or b[3] <= b[1] for b in boxes) or len(box_labels) != len(boxes):
                raise ValueError("malformed box")
        except (KeyError, ValueError, TypeError):
            problems["malformed_record"] += 1
            continue
        path = root / str(entry["file"])
        if not path.is_file():
            problems["missing_image"] += 1
            continue
        records.append(Record(path, tuple(boxes), tuple(box_labels),  # type: ignore[arg-type]
                              tuple(sorted(set(labels) | set(box_labels))), str(entry["file"])))
    return AnnotatedFiles(records, problems, categories)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) or (isinstance(x, str) and x.strip().lstrip("-").isdigit())


def _label(x: Any, lookup: dict[str, int]) -> int:
    if _is_int(x):
        return int(x)
    if str(x) not in lookup:
        raise ValueError(f"unknown class name {x!r}")
    return lookup[str(x)]
