"""A dataset of image files with boxes: the common base of `imagenet` and `folder`.

Images are decoded lazily. Iterating skips (and counts) images that cannot be read; indexing one
raises ``OSError`` naming the file. Boxes are clipped to the decoded image (counted as
``"box_clipped"``); boxes empty after clipping are dropped (``"box_empty"``). ``problems`` is a
``collections.Counter`` of everything skipped or repaired, filled while indexing and iterating
(each file counted once, however often it is read).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from camkit.data.imageio import read_image
from camkit.data.sample import Sample

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Record:
    """One image file and its annotation before decoding (boxes ``x0, y0, x1, y1``, exclusive ends)."""

    path: Path
    boxes: tuple[tuple[float, float, float, float], ...]
    box_labels: tuple[int, ...]
    labels: tuple[int, ...]  # the image's classes (those of its boxes, or given without boxes)
    id: str


class AnnotatedFiles(Sequence[Sample]):
    """Samples decoded on demand from `Record` objects."""

    def __init__(self, records: list[Record], problems: Counter[str], categories: list[str] | None) -> None:
        self.records = records
        self.problems = problems
        self.categories = categories
        self.skipped: list[str] = []  # ids skipped while iterating, with problems counted
        self._counted: set[int] = set()  # records whose decode-time problems are in `problems`

    def _count(self, i: int, problem: str) -> None:
        if i not in self._counted:
            self.problems[problem] += 1

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        i = range(len(self.records))[i]  # IndexError / negative indices as for a list
        record = self.records[i]
        try:
            image = read_image(record.path)
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError... on bad files
            raise OSError(f"cannot read image {str(record.path)!r}: {exc}") from exc
        h, w = image.shape[-2:]
        boxes, labels = [], []
        for box, label in zip(record.boxes, record.box_labels):
            x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(w)), min(box[3], float(h))
            if (x0, y0, x1, y1) != tuple(box):
                self._count(i, "box_clipped")
            if x1 <= x0 or y1 <= y0:
                self._count(i, "box_empty")
                continue
            boxes.append((x0, y0, x1, y1))
            labels.append(label)
        distinct = sorted(set(record.labels))
        self._counted.add(i)
        return Sample(
            image=image,
            label=distinct[0] if len(distinct) == 1 else distinct,
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            id=record.id,
            box_labels=torch.tensor(labels, dtype=torch.long),
        )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self.records)):
            try:
                yield self[i]
            except OSError:
                if i not in self._counted:
                    self._count(i, "unreadable_image")
                    self._counted.add(i)
                    self.skipped.append(self.records[i].id)

    def report(self) -> str:
        """One line: how many records, and the problem counts."""
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.problems.items())) or "none"
        return f"{len(self.records)} images; problems: {counts}"


def find_images(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` (recursively) by file stem."""
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
