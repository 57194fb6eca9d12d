"""The Ray engine gives the local engine's results, resumes the same way and survives a killed worker.

Starts a local Ray instance with 2 CPUs; skipped where Ray is not installed (``camkit[ray]``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from camkit.bench import BenchConfig, run_bench  # noqa: E402
from camkit.bench.config import Protocol  # noqa: E402
from camkit.bench.plan import Shard  # noqa: E402
from camkit.bench.ray_engine import RayEngine, _shard_records  # noqa: E402
from camkit.bench.store import RESULTS  # noqa: E402

pytestmark = pytest.mark.ray
SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)

CONFIG = BenchConfig(
    models=("digits_resnet=random",), methods=("gradcam", "layercam"), data="digits:8", batch_size=4,
    protocol=Protocol(perturbation_steps=8, box_thresholds=10), gallery_images=2, figure_images=1,
)
VOLATILE = {"seconds", "ms", "time", "timings", "ms_per_image"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray instance; its workers inherit the environment set here (import path, kill marker)."""
    marker = tmp_path_factory.mktemp("ray") / "killed"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "CAMKIT_TEST_MARKER")}
    os.environ["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")])
    os.environ["CAMKIT_TEST_MARKER"] = str(marker)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield marker
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _records(out: Path) -> list[dict]:
    recs = [json.loads(line) for line in (out / RESULTS).read_text().splitlines() if line.strip()]
    return sorted((_stable(r) for r in recs), key=lambda r: json.dumps(r, sort_keys=True))


def _stable(r):
    """A record without its timings (the only field that differs between two runs)."""
    if isinstance(r, dict):
        return {k: _stable(v) for k, v in r.items() if k not in VOLATILE and not k.startswith("time")}
    if isinstance(r, list):
        return [_stable(v) for v in r]
    return r


def _keys(out: Path) -> list[str]:
    return [json.loads(line).get("key") for line in (out / RESULTS).read_text().splitlines() if line.strip()]


def kill_first_attempt(shard: Shard, config: BenchConfig):
    """Kills its worker process the first time it sees the shard starting at image 4."""
    marker = Path(os.environ["CAMKIT_TEST_MARKER"])
    if shard.kind == "images" and shard.start == 4 and not marker.exists():
        marker.write_text("killed")
        os._exit(1)
    return _shard_records(shard, config)


def test_ray_equals_local_and_survives_a_killed_worker(tmp_path, ray_local):
    local = run_bench(CONFIG, tmp_path / "local", progress=False)
    marker = ray_local
    engine_options = {"num_workers": 2, "shard_fn": kill_first_attempt}
    remote = run_bench(CONFIG, tmp_path / "ray", engine="ray", progress=False, engine_options=engine_options)
    assert marker.exists(), "the test worker was not killed"
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert (tmp_path / "ray" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()
    keys = [k for k in _keys(tmp_path / "ray") if k]
    assert len(keys) == len(set(keys)), "duplicate records"
    assert remote.summary.models == local.summary.models


def test_ray_resume_skips_finished_shards(tmp_path, ray_local):
    out = tmp_path / "run"
    half = BenchConfig(**{**CONFIG.__dict__, "limit": 4})
    run_bench(half, out, engine="ray", progress=False)
    n_half = len(_keys(out))
    run_bench(CONFIG, out, engine="ray", progress=False)
    keys = [k for k in _keys(out) if k]
    assert len(keys) == len(set(keys)) and len(_keys(out)) > n_half
    fresh = tmp_path / "fresh"
    run_bench(CONFIG, fresh, progress=False)
    assert _records(out) == _records(fresh)


def test_ray_engine_errors_are_readable():
    with pytest.raises(Exception, match="num_workers"):
        RayEngine(num_workers=0)
