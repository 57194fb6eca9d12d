"""``camkit serve`` under load: throughput and latency on loopback, with and without dynamic batching.

    python3 benchmarks/bench_serve.py [--model efficientnet_lite0] [--method gradcam] [--clients 1,8,32]
                                      [--requests 2] [--rounds 2] [--threads 2]

For each server configuration -- ``sequential`` (one request at a time: ``--max-batch 1 --workers 1``),
``threads`` (no batching, 4 requests at once on the shared model: ``--max-batch 1 --workers 4``) and
``batching`` (dynamic batching: ``--max-batch 16 --workers 1``) -- the command ``camkit serve`` runs
in a subprocess, and 1, 8 and 32 concurrent clients each send ``--requests`` requests (after one
warm-up round), every client its own image (crops of a bundled photo). The three servers run side
by side and the rounds alternate between them (``--rounds`` times per client count), so a change
in machine load hits all three. Reported per row: throughput (requests/s, median over rounds) and
its ratio to the one-request-at-a-time server in the same rounds, p50 / p95 latency over all
requests, the mean batch size the server used, and the largest difference between a returned map
and the library's own call on that image alone (``camkit.create(method, model)(image)``), which
must stay at float rounding.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "sequential": ["--max-batch", "1", "--workers", "1"],
    "threads": ["--max-batch", "1", "--workers", "4"],
    "batching": ["--max-batch", "16", "--workers", "1"],
}


def photos(n: int, size: int = 160) -> list[bytes]:
    from PIL import Image

    from camkit.data.photos import sample_files

    im = Image.open(sample_files()["chelsea"]).convert("RGB")
    out = []
    for i in range(n):
        x0, y0 = (i * 37) % (im.width - size), (i * 23) % (im.height - size)
        buf = io.BytesIO()
        im.crop((x0, y0, x0 + size, y0 + size)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def references(model_name: str, method: str, images: list[bytes]) -> list[np.ndarray]:
    import camkit
    from camkit.bench.sources import load_model
    from camkit.data import resize_image
    from camkit.data.imageio import read_image

    model = load_model(model_name)
    cam = camkit.create(method, model, layer=model.default_layer)
    return [cam(resize_image(read_image(io.BytesIO(b)), tuple(model.input_size))[None])[0].numpy() for b in images]


def start(args: argparse.Namespace, config: list[str]) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "camkit", "serve", "--models", args.model, "--port", "0", "--threads",
           str(args.threads), "--max-queue", "1024", "--timeout", "600", *config]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if m := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit(f"camkit serve did not start (exit {proc.wait()})")


def round_trip(url: str, args: argparse.Namespace, images: list[bytes], clients: int, per_client: int,
               refs: list[np.ndarray]) -> dict:
    import httpx

    latencies: list[float] = []
    batches: list[int] = []
    diffs: list[float] = []
    errors: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(per_client):
                t = time.perf_counter()
                try:
                    r = c.post("/explain", files={"image": ("x.png", images[i], "image/png")},
                               data={"model": args.model, "methods": args.method, "target": "top1"})
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                body = r.json()
                got = np.load(io.BytesIO(base64.b64decode(body["maps"][args.method][0]["npy"])))
                diffs.append(float(np.abs(got - refs[i]).max()))
                batches.append(body["timings"]["batch_size"][args.method])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"n": len(latencies), "rps": len(latencies) / wall, "latencies": latencies, "batches": batches,
            "diff": max(diffs)}


def quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--method", default="gradcam")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=2, help="requests per client per round (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per client count and server (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in the server")
    p.add_argument("--configs", default=",".join(CONFIGS))
    args = p.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    images = photos(max(levels))
    refs = references(args.model, args.method, images)
    print(f"camkit serve, {args.model} {args.method}, top1, {len(os.sched_getaffinity(0))} CPUs, "
          f"server torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    print("| server | clients | requests | throughput (req/s) | vs sequential | p50 (ms) | p95 (ms) | mean batch | "
          "max abs diff vs library |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = args.configs.split(",")
    servers = {}
    try:
        for name in names:
            servers[name] = start(args, CONFIGS[name])
            round_trip(servers[name][1], args, images, min(8, max(levels)), 1, refs)  # warm-up
        for clients in levels:
            runs: dict[str, list[dict]] = {n: [] for n in names}
            for _ in range(args.rounds):
                for name in names:  # alternate, so that the machine's load hits every server alike
                    runs[name].append(round_trip(servers[name][1], args, images, clients, args.requests, refs))
            for name in names:
                rs = runs[name]
                lat = [t for r in rs for t in r["latencies"]]
                rps = statistics.median(r["rps"] for r in rs)
                ratio = (statistics.median(r["rps"] / b["rps"] for r, b in zip(rs, runs["sequential"]))
                         if "sequential" in runs else float("nan"))
                print(f"| {name} | {clients} | {len(lat)} | {rps:.2f} | {ratio:.2f}x | {1000 * statistics.median(lat):.0f} | "
                      f"{1000 * quantile(lat, 0.95):.0f} | {statistics.mean(b for r in rs for b in r['batches']):.1f} | "
                      f"{max(r['diff'] for r in rs):.1e} |", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
