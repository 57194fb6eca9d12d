"""One writer per run directory: an exclusive lock (the `filelock` package) and who holds it.

`run_bench` holds `directory_lock(out)` from the resume check to the report, so a second `camkit bench`
on the same directory stops at once with a `CamkitError` naming the holder (PID, host, start time)
instead of interleaving records. The lock is an OS lock (`flock`) on `.camkit-bench.lock`: the
kernel drops it when its process dies, so a run killed with `kill -9` never blocks the next one. The
holder's identity is written beside it in `.camkit-bench.owner.json` (the lock file itself is the
lock library's); a stale owner file left by a killed run is overwritten by the next holder.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import CamkitError

LOCK_FILE = ".camkit-bench.lock"
OWNER_FILE = ".camkit-bench.owner.json"


class DirectoryLockedError(CamkitError):
    """Another process is writing into the run directory."""


def _holder(directory: Path) -> str:
    """'PID 123 on host h, started 2026-12-06 23:01:02 UTC' from the owner file, or a fallback."""
    try:
        owner = json.loads((directory / OWNER_FILE).read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(owner["started"]))
        return f"PID {owner['pid']} on host {owner['host']}, started {started} ({owner.get('command', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its PID yet)"


@contextmanager
def directory_lock(directory: str | os.PathLike[str], command: str = "camkit bench") -> Iterator[None]:
    """Hold `directory`'s writer lock for the `with` block; `DirectoryLockedError` at once if another
    process holds it (no waiting)."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DirectoryLockedError(
            f"{directory} is in use by {_holder(directory)}: two runs writing one directory would mix their "
            "records. Wait for it to finish (or stop it), or choose another output directory."
        ) from None
    owner = directory / OWNER_FILE
    try:
        tmp = owner.with_name(owner.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                   "command": command}), encoding="utf-8")
        os.replace(tmp, owner)
        yield
    finally:
        try:
            owner.unlink(missing_ok=True)
        finally:
            lock.release()
            if created:
                _remove_if_unused(directory)


def _remove_if_unused(directory: Path) -> None:
    """Remove a directory this lock created when the run wrote nothing into it (it failed before
    starting, e.g. no images): no empty run directory is left behind."""
    try:
        if {p.name for p in directory.iterdir()} <= {LOCK_FILE}:
            (directory / LOCK_FILE).unlink(missing_ok=True)
            directory.rmdir()
    except OSError:
        pass
