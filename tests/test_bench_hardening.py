"""The bench's run directory under faults: two runs on one directory (a lock naming its holder, never
blocked by a killed run) and a corrupted record (its unit recomputed, a warning with the count)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camkit.bench.lock import OWNER_FILE, DirectoryLockedError, directory_lock
from camkit.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = ("import sys, time; from camkit.bench.lock import directory_lock\n"
        "with directory_lock(sys.argv[1], 'holder'):\n"
        "    print('held', flush=True); time.sleep(120)\n")


def _holder(directory: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "held":
        proc.kill()
        pytest.fail(f"the holder did not take the lock: {line!r} {proc.stderr.read()}")
    return proc


def test_second_bench_on_a_locked_directory_stops_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        t0 = time.monotonic()
        code = main(["bench", "--models", "digits_resnet=random", "--methods", "gradcam", "--data", "digits:4",
                     "--threads", "1", "-q", "-o", str(out)])
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        assert code == 1 and took < 10
        assert f"PID {proc.pid}" in err and socket.gethostname() in err and "started" in err, err
        assert "another output directory" in err
        assert not (out / "results.jsonl").exists()  # the second run wrote nothing
        with pytest.raises(DirectoryLockedError, match=f"PID {proc.pid}"):
            with directory_lock(out):
                pass
        assert main(["report", str(out)]) == 1  # rewriting the report of a run in progress waits too
    finally:
        proc.kill()
        proc.wait()


def test_a_run_killed_with_sigkill_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / OWNER_FILE).read_text())["pid"] == proc.pid  # the stale owner file is there
    t0 = time.monotonic()
    with directory_lock(out):
        assert json.loads((out / OWNER_FILE).read_text())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 5
    assert not (out / OWNER_FILE).exists()



def test_a_corrupted_map_record_is_recomputed_on_resume_with_a_warning(tmp_path):
    from camkit.bench import BenchConfig, Protocol, run_bench

    out = tmp_path / "out"
    config = BenchConfig(models=("digits_resnet=random",), methods=("gradcam",), data="digits:4", batch_size=2,
                         protocol=Protocol(perturbation_steps=4, baselines=()), gallery_images=0, figure_images=0)
    run_bench(config, out, progress=False)
    table = (out / "table.md").read_text()
    path = out / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    maps = [i for i, line in enumerate(lines) if '"type":"map"' in line]
    victim = json.loads(lines[maps[1]])
    lines[maps[1]] = lines[maps[1]][:57] + "\x00\x00 disk error \x00" + lines[maps[1]][90:]  # mid-file, not a tail
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 unreadable line\(s\).*1 unit\(s\) that lost a record .* recomputed"):
        result = run_bench(config, out, progress=False)
    assert result.units == 1
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if "disk error" not in line]
    again = [r for r in records if r["key"] == victim["key"]]
    assert len(again) == 1 and again[0]["unit"] == victim["unit"] and again[0]["iou"] == victim["iou"]
    assert len({r["key"] for r in records}) == len(records)  # nothing else written twice
    assert (out / "table.md").read_text() == table


def test_a_unit_marker_counting_more_records_than_stored_is_not_done(tmp_path):
    from camkit.bench.store import ResultStore

    with ResultStore(tmp_path) as store:  # a unit marker that counts two records; one is left
        store.append({"key": "r1", "type": "image", "unit": "unit|m|predictions|0-2"})
        store.append({"key": "unit|m|predictions|0-2", "type": "unit", "records": 2})
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write("not json\n")
    assert ResultStore(tmp_path).incomplete == {"unit|m|predictions|0-2"}
    assert ResultStore(tmp_path).done_units == set()
