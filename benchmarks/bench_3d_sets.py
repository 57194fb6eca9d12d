"""Which map to trust on clips and volumes: the bench on the generated 3-D sets with the bundled nets.

    python3 benchmarks/bench_3d_sets.py [N] [--methods gradcam,gradcam++,layercam,hirescam,xgradcam,scorecam]

Runs ``camkit bench`` on ``moving_digits:N`` with ``moving_digits_net`` and on ``digit_volumes:N`` with
``digit_volumes_net`` (default N = 40; held-out source digits), then prints, per set, the mean of the
localisation and faithfulness columns per method next to the uniform / centre / random baselines.
The reports (``report.html``, ``table.md``) stay in ``camkit-report-3d/<set>``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from camkit.cli import main

COLUMNS = ("pointing", "energy", "iou", "deletion", "insertion")


def summary(run: Path) -> dict[str, dict[str, float]]:
    """Per method: the mean of each column over the predicted-class records."""
    rows: dict[str, dict[str, list[float]]] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] != "map" or r["kind"] != "top1":
            continue
        cols = rows.setdefault(r["method"], {c: [] for c in COLUMNS})
        for c in COLUMNS:
            if r.get(c) is not None:
                cols[c].append(float(r[c]))
    return {m: {c: statistics.fmean(v) if v else float("nan") for c, v in cols.items()} for m, cols in rows.items()}


def run(n: int, methods: str, out: Path) -> None:
    for data, model in ((f"moving_digits:{n}", "moving_digits_net"), (f"digit_volumes:{n}", "digit_volumes_net")):
        where = out / data.split(":")[0]
        code = main(["bench", "--models", model, "--methods", methods, "--data", data, "--batch-size", "8",
                     "--steps", "16", "-o", str(where), "-q"])
        if code:
            raise SystemExit(code)
        images = [json.loads(line) for line in (where / "results.jsonl").read_text().splitlines()]
        acc = statistics.fmean(r["correct"] for r in images if r["type"] == "image")
        print(f"\n{data} with {model} (top-1 {acc:.3f}); means over the predicted class")
        print(f"| method | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}")
        for method, cols in summary(where).items():
            print(f"| {method} | " + " | ".join(f"{cols[c]:.3f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=40)
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam,hirescam,xgradcam,scorecam")
    parser.add_argument("-o", "--output", type=Path, default=Path("camkit-report-3d"))
    args = parser.parse_args()
    run(args.n, args.methods, args.output)
