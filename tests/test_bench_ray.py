"""The Ray engine gives the local engine's results, resumes the same way and survives a killed worker;
the README's cluster steps (token authentication) work with a head and a second node on this machine.

Starts a local Ray instance with 2 CPUs, and for the cluster test a head and a worker node with
``ray start --block`` (bound to 127.0.0.1, stopped by PID); skipped where Ray is not installed
(``camkit[ray]``).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
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


def test_without_address_a_fresh_local_instance_is_started(monkeypatch):
    """Not whatever cluster an earlier ``ray start`` recorded on the machine (Ray's address=None does that)."""
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address=None, **kw: seen.update(address=address, **kw))
    RayEngine(num_cpus=1)._connect()
    assert seen["address"] == "local" and seen["num_cpus"] == 1
    RayEngine(address="auto")._connect()
    assert seen["address"] == "auto"


# ------------------------------------------------------------------ a two-node cluster, as the README says


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ARGS --block`` on 127.0.0.1 with 1 CPU and its own agent ports; returns once it is up."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--block", "--node-ip-address", "127.0.0.1",
           "--num-cpus", "1", "--disable-usage-stats", "--dashboard-agent-listen-port", str(_port()),
           "--metrics-export-port", str(_port()), "--runtime-env-agent-port", str(_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        text = log.read_text(errors="replace")
        if "block forever" in text:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    _stop([proc])
    pytest.fail(f"ray start {' '.join(args)} did not come up:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each ``ray start --block`` by PID (it stops the node's processes), SIGKILL if it hangs."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the node's own process group (start_new_session)
            p.wait()


@pytest.fixture()
def cluster(tmp_path):
    """A head and a second node with token authentication, as the README's steps: RAY_AUTH_MODE=token and
    one token for every node and the driver (here a fresh token file, not ~/.ray/auth_token)."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = _port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_ray_start(["--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false"],
                                env, tmp_path / "head.log"))
        # comes up only once the head accepted it (without the token: InvalidAuthToken, and it exits)
        procs.append(_ray_start(["--address", f"127.0.0.1:{port}"], env, tmp_path / "node.log"))
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(procs)
        shutil.rmtree(temp, ignore_errors=True)


def test_bench_on_a_two_node_cluster_equals_the_local_run(cluster, tmp_path):
    address, env = cluster
    args = ["bench", "--models", "digits_resnet=random", "--methods", "gradcam", "--data", "digits:4", "--batch-size",
            "2", "--steps", "2", "--gallery", "1", "--threads", "1", "-q"]
    done = subprocess.run([sys.executable, "-m", "camkit", *args, "--engine", "ray", "--address", address,
                           "--num-workers", "2", "-o", str(tmp_path / "ray")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from camkit.cli import main

    assert main([*args, "-o", str(tmp_path / "local")]) == 0
    for name in ("table.csv", "significance.csv"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
