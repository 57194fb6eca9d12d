"""Append-only JSONL store of records, safe against interruption.

``results.jsonl`` gets one JSON object per line, flushed after each record and fsynced after each
``unit`` marker (the end of a unit of work), so a killed run loses at most the unit in flight.
Reading drops a torn last line (a record cut off mid-write); opening for append also cuts it from
the file, so the next record starts on a fresh line. Records are keyed: a key already in the store
is not written again, so rerunning a half-done unit adds no duplicate. Each record names its unit
(`unit`) and the unit's marker counts them (`records`): a unit that lost a record to a corrupted line
is not done (`ResultStore.incomplete`) and runs again, writing only what is missing.

Binary artifacts (overlays, figures) travel inside records as base64 under ``artifacts``; the store
writes them to files next to the results (``artifacts/...``, names from a hash of the record key,
never from image names) and replaces them by relative paths under ``files``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from ..errors import CamkitError

RESULTS = "results.jsonl"
ARTIFACTS = "artifacts"
Record = dict[str, Any]


def read_records(path: str | os.PathLike[str]) -> tuple[list[Record], int]:
    """All complete records of a JSONL file and how many lines were dropped (a torn last line, or
    lines that are not JSON objects). A missing file has no records."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records, dropped = [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            dropped += 1
            continue
        if isinstance(rec, dict) and "key" in rec:
            records.append(rec)
        else:
            dropped += 1
    return records, dropped


def incomplete_units(records: list[Record]) -> set[str]:
    """Keys of the unit markers that count more records (`records`) than the store holds tagged with
    their key (`unit`): a record was lost, e.g. to a corrupted line, so the unit must run again."""
    have = Counter(r["unit"] for r in records if "unit" in r)
    return {r["key"] for r in records if r.get("type") == "unit" and isinstance(r.get("records"), int)
            and have[r["key"]] < r["records"]}


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / infinite floats replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _safe(text: str) -> str:
    """A file-name-safe slug (letters, digits, ``-_.``), 40 chars at most."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "x"


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline) off the file."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


class ResultStore:
    """The records of one run directory: ``keys`` written so far, ``done_units``, `append`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RESULTS
        records, self.dropped = read_records(self.path)
        self.keys: set[str] = {r["key"] for r in records}
        self.incomplete: set[str] = incomplete_units(records)  # markers that lost a record: recompute
        self.done_units: set[str] = {r["key"] for r in records if r.get("type") == "unit"} - self.incomplete
        self.written = 0
        self._file: Optional[Any] = None

    def __enter__(self) -> "ResultStore":
        _repair_tail(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def _write_artifacts(self, record: Record) -> Record:
        artifacts = record.pop("artifacts", None)
        if not artifacts:
            return record
        folder = self.dir / ARTIFACTS / _safe(str(record.get("model", "run")))
        folder.mkdir(parents=True, exist_ok=True)
        stem = hashlib.sha1(record["key"].encode()).hexdigest()[:16]
        files = {}
        for name, b64 in artifacts.items():
            target = folder / f"{stem}-{_safe(name)}"
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(base64.b64decode(b64))
            os.replace(tmp, target)
            files[name] = target.relative_to(self.dir).as_posix()
        return {**record, "files": files}

    def append(self, record: Record) -> bool:
        """Write ``record`` unless its key is already stored; True when written."""
        if self._file is None:
            raise CamkitError("ResultStore.append outside 'with store:'")
        key = record.get("key")
        if not isinstance(key, str):
            raise CamkitError(f"record without a string key: {str(record)[:200]}")
        if key in self.keys:
            return False
        record = self._write_artifacts(dict(record))
        self._file.write(json.dumps(_finite(record), separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()
        if record.get("type") == "unit":
            os.fsync(self._file.fileno())
            self.done_units.add(key)
        self.keys.add(key)
        self.written += 1
        return True

    def extend(self, records: Iterable[Record]) -> int:
        """Append many; returns how many were new."""
        return sum(self.append(r) for r in records)

    def records(self) -> list[Record]:
        """Everything stored so far (re-read from disk)."""
        return read_records(self.path)[0]
