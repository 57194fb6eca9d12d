"""The benchmark end to end on a tiny folder dataset: files, tables recomputed from the records,
interruption + resume, HTML escaping and references, corrupt images; plus store, plan and runner units.

Models are the digits architectures with seeded random weights (no training needed), two fast
methods, a handful of 64 x 64 images, one torch thread.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from camkit.bench import BenchConfig, Protocol, ResultStore, make_plan, read_records, resolve_methods, run_shard
from camkit.bench.plan import Shard
from camkit.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
SCRIPT_NAME = "<script>alert(1)</script>.png"
MODELS = "digits_resnet=random,digits_vgg=random"
N_GOOD = 6


def make_folder(root: Path, n: int = N_GOOD) -> Path:
    """``n`` generated digits images as PNG files (one named like a script tag), a corrupt file, boxes.json."""
    from camkit import viz
    from camkit.data import digits

    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, s in enumerate(digits(n, seed=3)):
        name = SCRIPT_NAME if i == 1 else f"img{i}.png"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)  # the script name holds a '/', so it is a sub-folder
        viz.to_pil(s.image).save(path)
        entries.append({"file": name, "label": int(s.label), "boxes": s.boxes.tolist()})
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    entries.insert(3, {"file": "broken.png", "label": 1, "boxes": [[1, 1, 9, 9]]})
    (root / "boxes.json").write_text(json.dumps({"categories": [str(d) for d in range(10)], "images": entries}))
    return root


def bench_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["bench", "--models", MODELS, "--methods", "gradcam,layercam", "--data", f"folder:{data}",
            "--batch-size", "2", "--steps", "4", "--gallery", "4", "--threads", "1", "-q", "-o", str(out), *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished bench run (in-process, via the CLI's main)."""
    base = tmp_path_factory.mktemp("bench")
    data = make_folder(base / "data")
    threads = torch.get_num_threads()
    try:
        assert main(bench_args(data, base / "out")) == 0
    finally:
        torch.set_num_threads(threads)
    return data, base / "out"


def records(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return {r["method"]: r for r in rows}


# ---------------------------------------------------------------------------------------- end to end


def test_run_writes_every_file(run):
    _, out = run
    for name in ("results.jsonl", "run.json", "table.md", "table.csv", "report.html"):
        assert (out / name).is_file(), name
    json.loads((out / "run.json").read_text())
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "iou_digits_resnet_random.png" in figures and "iou_digits_vgg_random.png" in figures
    assert any(f.startswith("layers_") for f in figures) and any(f.startswith("guided_") for f in figures)


def test_records_parse_and_keys_are_unique(run):
    recs = records(run[1])
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys))
    maps = [r for r in recs if r["type"] == "map"]
    assert {r["kind"] for r in maps} >= {"top1", "least"}
    assert {r["method"] for r in maps} == {"gradcam", "layercam", "baseline:uniform", "baseline:center_gaussian",
                                           "baseline:random"}
    per = {(r["model"], r["method"], r["image"], r["kind"]) for r in maps}
    assert len(per) == len(maps)
    # a "true" record exactly for the misclassified images
    wrong = {(r["model"], r["image"]) for r in recs if r["type"] == "image" and not r["correct"]}
    assert {(r["model"], r["image"]) for r in maps if r["kind"] == "true"} == wrong
    top = [r for r in maps if r["kind"] == "top1"]
    assert all(r["protocol"]["perturbation_steps"] == 4 and r["deletion"] is not None for r in top)
    assert all(0.0 <= r["iou"] <= 1.0 for r in maps)


def test_tables_equal_recomputation_from_results(run):
    out = run[1]
    maps = [r for r in records(out) if r["type"] == "map" and r["kind"] == "top1"]
    table = read_csv(out / "table.csv")
    models = ["digits_resnet=random", "digits_vgg=random"]
    assert list(table) == ["gradcam", "layercam", "baseline:uniform", "baseline:center_gaussian", "baseline:random",
                           "accuracy %"]
    for method in ["gradcam", "layercam", "baseline:uniform", "baseline:center_gaussian", "baseline:random"]:
        for model in models:
            rs = [r for r in maps if r["model"] == model and r["method"] == method]
            assert rs
            iou = sum(r["iou"] for r in rs) / len(rs)
            drop = sum(max(0.0, r["y"] - r["o"]) / r["y"] for r in rs) / len(rs) * 100
            inc = sum(r["o"] > r["y"] for r in rs) / len(rs) * 100
            deletion = sum(r["deletion"] for r in rs) / len(rs)
            row = table[method]
            assert float(row[f"iou:{model}"]) == pytest.approx(iou, abs=1e-6)
            assert float(row[f"average_drop:{model}"]) == pytest.approx(drop, abs=1e-4)
            assert float(row[f"increase:{model}"]) == pytest.approx(inc, abs=1e-4)  # the library sums in float32
            assert float(row[f"deletion:{model}"]) == pytest.approx(deletion, abs=1e-6)
            sanity = sum(r["sanity"] for r in rs) / len(rs)
            assert float(row[f"sanity:{model}"]) == pytest.approx(sanity, abs=1e-6)
            if method.startswith("baseline:"):  # a map that ignores the model is unchanged by randomisation
                assert all(r["sanity"] == pytest.approx(1.0) for r in rs)
            else:
                assert all(-1.0 <= r["sanity"] < 0.999 for r in rs)
            md = (out / "table.md").read_text()
            assert re.search(rf"\| {re.escape(method)} \|.*{iou:.4f}", md)
    images = [r for r in records(out) if r["type"] == "image"]
    acc = sum(r["correct"] for r in images if r["model"] == models[0]) / N_GOOD * 100
    assert float(table["accuracy %"][f"iou:{models[0]}"]) == pytest.approx(acc)


def _per_image(recs: list[dict], model: str, method: str, key: str) -> dict[int, object]:
    """Each image's value of one metric, written out from the record fields (independently of camkit)."""
    out = {}
    for r in recs:
        if r["type"] != "map" or r["model"] != model or r["method"] != method:
            continue
        if key == "iou_least" and r["kind"] == "least" and r["iou"] is not None:
            out[r["index"]] = r["iou"]
        elif r["kind"] != "top1":
            continue
        elif key == "average_drop" and r["y"] > 0:
            out[r["index"]] = max(0.0, r["y"] - r["o"]) / r["y"] * 100
        elif key == "increase":
            out[r["index"]] = 100.0 * (r["o"] > r["y"])
        elif key == "maxboxacc" and r["box_ious"]:
            out[r["index"]] = [float(v >= 0.5) for v in r["box_ious"]]
        elif key in ("iou", "pointing", "energy", "deletion", "insertion", "road", "arcc", "sanity") and r[key] is not None:
            out[r["index"]] = r[key]
    return out


def _bootstrap(values: np.ndarray) -> np.ndarray:
    """2000 resamples: row b = the b-th ``default_rng(0).integers(0, n, n)``; mean, or max over thresholds of the means."""
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, len(values), size=len(values)) for _ in range(2000)])
    means = values[idx].mean(axis=1)
    return means if values.ndim == 1 else means.max(axis=-1)


METHODS = ["gradcam", "layercam", "baseline:uniform", "baseline:center_gaussian", "baseline:random"]
KEYS = ["iou", "average_drop", "increase", "pointing", "energy", "maxboxacc", "deletion", "insertion", "road", "arcc", "iou_least",
        "sanity"]


def test_intervals_equal_an_independent_bootstrap_of_the_records(run):
    out = run[1]
    recs = records(out)
    table = read_csv(out / "table.csv")
    for model in ["digits_resnet=random", "digits_vgg=random"]:
        for key in KEYS:
            per = {me: _per_image(recs, model, me, key) for me in METHODS}
            images = sorted({i for d in per.values() for i in d})
            assert images and all(set(d) == set(images) for d in per.values())
            for me in METHODS:
                values = np.array([per[me][i] for i in images], dtype=float)
                lo, hi = np.percentile(_bootstrap(values), [2.5, 97.5])
                row = table[me]
                assert float(row[f"{key}:{model}:ci_low"]) == pytest.approx(lo, abs=2e-6), (model, key, me)
                assert float(row[f"{key}:{model}:ci_high"]) == pytest.approx(hi, abs=2e-6), (model, key, me)
                assert int(row[f"{key}:{model}:n"]) == len(images)
                assert lo - 1e-6 <= float(row[f"{key}:{model}"]) <= hi + 1e-6 or values.ndim == 2


def test_significance_against_the_best_baseline_is_paired_and_holm_corrected(run):
    out = run[1]
    recs = records(out)
    rows = list(csv.DictReader(io.StringIO((out / "significance.csv").read_text())))
    assert list(rows[0]) == ["model", "metric", "method", "baseline", "diff", "ci_low", "ci_high", "p", "p_holm", "n",
                             "beats_every_baseline"]
    assert len(rows) == 2 * len(KEYS) * 2  # models x metrics x methods
    table = read_csv(out / "table.csv")
    for r in rows:
        assert float(r["p_holm"]) >= float(r["p"]) - 1e-12
        col = f"{r['metric']}:{r['model']}"
        better = "lower" if r["metric"] in ("average_drop", "deletion", "iou_least", "sanity") else "higher"
        scores = {b: float(table[b][col]) for b in METHODS[2:]}
        best = (max if better == "higher" else min)(scores, key=scores.__getitem__)
        assert scores[r["baseline"]] == scores[best]  # the best baseline of that model and metric
        a = _per_image(recs, r["model"], r["method"], r["metric"])
        b = _per_image(recs, r["model"], r["baseline"], r["metric"])
        images = sorted(a)
        va, vb = (np.array([d[i] for i in images], dtype=float) for d in (a, b))
        rng = np.random.default_rng(0)
        idx = np.stack([rng.integers(0, len(images), size=len(images)) for _ in range(2000)])
        stat = (lambda v: v[idx].mean(1)) if va.ndim == 1 else (lambda v: v[idx].mean(1).max(-1))
        diffs = stat(va) - stat(vb)  # the same resampled images for both: paired
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        p = min(1.0, 2 * (1 + min((diffs <= 0).sum(), (diffs >= 0).sum())) / 2001)
        if np.abs(va - vb).max() <= 1e-6:  # equal on every image: no difference at all
            lo, hi, p = 0.0, 0.0, 1.0
        assert float(r["ci_low"]) == pytest.approx(lo, rel=1e-5, abs=1e-9)
        assert float(r["ci_high"]) == pytest.approx(hi, rel=1e-5, abs=1e-9)
        assert float(r["p"]) == pytest.approx(p, rel=1e-5)
    md = (out / "table.md").read_text()
    starred = [r for r in rows if r["beats_every_baseline"] == "true"]
    assert md.count("\\*") == len(starred) + 1  # one mark per such cell, plus the legend
    assert "## Which methods can be told apart" in md and "Significantly better than every baseline map" in md


def test_randomization_curve_equals_a_direct_cascading_test(run):
    import camkit
    from camkit import metrics
    from camkit.bench import load_model

    out = run[1]
    recs = records(out)
    fig = next(r for r in recs if r["type"] == "figure" and r["figure"] == "randomization"
               and r["model"] == "digits_resnet=random")
    model = load_model("digits_resnet=random")
    assert set(fig["curves"]) == {"gradcam", "layercam"} and fig["layers"] == metrics.default_randomization_layers(model)
    images = sorted((r for r in recs if r["type"] == "image" and r["model"] == fig["model"]), key=lambda r: r["index"])
    from camkit.bench import load_source

    source = load_source(f"folder:{run[0]}")
    x = torch.stack([source.load(r["index"]).resized(tuple(model.input_size)).image for r in images[:fig["images"]]])
    direct = metrics.randomization_test(lambda m: camkit.create("gradcam", m, layer=model.default_layer), model, x,
                                        [r["pred"] for r in images[:fig["images"]]], seed=1000)
    np.testing.assert_allclose(fig["curves"]["gradcam"], direct.spearman.mean(1).numpy(), atol=1e-5)
    page = (out / "report.html").read_text()
    name = "figures/randomization_digits_resnet_random.png"
    assert name in page and (out / name).is_file()
    assert "Method against method" in page and "row − column" in page


def test_markdown_has_table8_layout(run):
    md = (run[1] / "table.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| Method | IoU"))
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert len(cells) == 1 + 3 * 2  # method + (IoU, drop, increase) x 2 models
    assert [c.split(" (")[0] for c in cells[1::2]] == ["IoU", "Average Drop %", "Increase in Confidence %"]
    for needle in ("Pointing game", "Energy pointing game", "MaxBoxAcc", "Deletion AUC", "Insertion AUC",
                   "Classification accuracy", "## Protocol", "baseline:center_gaussian"):
        assert needle in md
    assert "; 2 methods and 3 baselines." in md  # counted by kind (issue 13: it said "5 methods and baselines")
    assert "**Warning: digits_resnet runs with random weights" in md


def test_corrupt_image_is_skipped_and_counted(run):
    out = run[1]
    skips = {r["image"] for r in records(out) if r["type"] == "skip"}
    assert skips == {"broken.png"}
    assert "Unreadable images skipped: 1 (broken.png)" in (out / "table.md").read_text()
    assert "Unreadable images skipped (1)" in (out / "report.html").read_text()
    assert sum(r["type"] == "image" for r in records(out)) == 2 * N_GOOD


def test_html_escapes_names_and_references_existing_files(run):
    out = run[1]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(r.startswith("figures/") for r in refs) and any(r.startswith("artifacts/") for r in refs)
    for ref in refs:
        assert not re.match(r"[a-z]+://", ref), ref  # nothing from the network
        assert (out / ref).is_file(), ref


def test_rerun_is_a_no_op_and_no_resume_refuses(run):
    data, out = run
    before = (out / "results.jsonl").read_bytes()
    assert main(bench_args(data, out)) == 0
    assert (out / "results.jsonl").read_bytes() == before
    assert main(bench_args(data, out, "--no-resume")) == 1


def test_changed_protocol_is_refused(run, capsys):
    data, out = run
    args = bench_args(data, out)
    args[args.index("--steps") + 1] = "5"
    assert main(args) == 1
    assert "another output directory" in capsys.readouterr().err


def _wait_for_units(path: Path, proc: subprocess.Popen, count: int, timeout: float = 120) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if path.exists() and path.read_text(encoding="utf-8", errors="replace").count('"type":"unit"') >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"bench finished before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("bench wrote no records in time")


def test_interrupted_run_resumes_to_identical_tables(run, tmp_path):
    data, reference = run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "camkit", *bench_args(data, out)]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_units(out / "results.jsonl", proc, 5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with (out / "results.jsonl").open("a") as f:  # and a record torn mid-write
        f.write('{"type":"map","key":"digits_resnet=random|gradcam|img0.png|top1","iou":0.')
    partial = read_records(out / "results.jsonl")
    assert partial[1] == 1 and 0 < len(partial[0]) < len(records(reference))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "table.md").read_text() == (reference / "table.md").read_text()
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()
    assert (out / "significance.csv").read_text() == (reference / "significance.csv").read_text()
    recs = records(out)
    assert len({r["key"] for r in recs}) == len(recs) == len(records(reference))


# -------------------------------------------------------------------------------------------- units


def test_store_drops_torn_line_and_deduplicates(tmp_path):
    with ResultStore(tmp_path) as store:
        assert store.append({"key": "a", "type": "map", "x": 1.0})
        assert not store.append({"key": "a", "type": "map", "x": 2.0})
        store.append({"key": "u", "type": "unit", "model": "m", "method": "gradcam"})
        store.append({"key": "n", "type": "map", "x": float("nan")})
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"key": "b", "ty')
    recs, dropped = read_records(tmp_path / "results.jsonl")
    assert [r["key"] for r in recs] == ["a", "u", "n"] and dropped == 1 and recs[2]["x"] is None
    with ResultStore(tmp_path) as store:
        assert store.done_units == {"u"}
        assert store.append({"key": "b", "type": "map"})
    recs, dropped = read_records(tmp_path / "results.jsonl")
    assert [r["key"] for r in recs] == ["a", "u", "n", "b"] and dropped == 0


def test_store_writes_artifacts_under_hashed_names(tmp_path):
    import base64

    with ResultStore(tmp_path) as store:
        store.append({"key": "m|x|../../etc/passwd|top1", "type": "map", "model": "../m",
                      "artifacts": {"overlay.jpg": base64.b64encode(b"data").decode()}})
    (rec,), _ = read_records(tmp_path / "results.jsonl")
    path = tmp_path / rec["files"]["overlay.jpg"]
    assert "artifacts" not in rec and path.read_bytes() == b"data"
    assert path.resolve().is_relative_to((tmp_path / "artifacts").resolve())


CONFIG = BenchConfig(models=("digits_resnet=random",), methods=("gradcam", "layercam"), data="digits:5",
                     batch_size=2, protocol=Protocol(perturbation_steps=2, box_thresholds=5), figure_images=1)


def test_plan_shards_and_skips_done_units():
    shards = make_plan(CONFIG, 5)
    assert [(s.kind, s.start, s.stop) for s in shards] == [("images", 0, 2), ("images", 2, 4), ("images", 4, 5),
                                                           ("figures", 0, 1)]
    assert shards[0].methods[-3:] == ("baseline:uniform", "baseline:center_gaussian", "baseline:random")
    done = frozenset(shards[0].units() + shards[1].units()[:2])
    again = make_plan(CONFIG, 5, done)
    assert [s.start for s in again][:2] == [2, 4] and again[0].done == frozenset(shards[1].units()[:2])
    assert make_plan(BenchConfig(**{**CONFIG.__dict__, "limit": 2}), 5)[0].stop == 2


def test_resolve_methods():
    assert "guided-gradcam" not in resolve_methods("all") and "gradcam" in resolve_methods("all")
    assert resolve_methods("GradCAM++, layer_cam") == ("gradcam++", "layercam")
    with pytest.raises(Exception, match="attributions"):
        resolve_methods("guided-gradcam")


def test_run_shard_is_deterministic_and_skips_done_units():
    shard = Shard("digits_resnet=random", "images", 0, 2, ("gradcam", "baseline:random"))
    a = [r for r in run_shard(shard, CONFIG)]
    b = [r for r in run_shard(shard, CONFIG)]
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rs]  # noqa: E731
    assert strip(a) == strip(b)
    assert [r["key"] for r in a if r["type"] == "unit"] == shard.units()
    partial = Shard(shard.model, "images", 0, 2, shard.methods, frozenset(shard.units()[:2]))
    rest = [r for r in run_shard(partial, CONFIG)]
    assert {r.get("method") for r in rest if r["type"] == "map"} == {"baseline:random"}
    assert not any(r["type"] == "image" for r in rest)


def test_one_call_with_k_targets_equals_separate_calls():
    """The runner explains top-1, least and true in one call with a (B, K) target tensor."""
    import camkit
    from camkit.bench import load_model

    model = load_model("digits_resnet=random")
    x = torch.rand(2, 3, 64, 64)
    t = torch.tensor([[1, 2, 3], [4, 5, 6]])
    both = camkit.GradCAM(model, layer="layer4")(x, targets=t)
    for k in range(3):
        torch.testing.assert_close(both[:, k], camkit.GradCAM(model, layer="layer4")(x, targets=t[:, k].tolist()))


def test_each_method_is_warmed_up_once_per_model_before_it_is_timed(monkeypatch):
    """The first explain call of a method on a model in a process is an untimed one-image call."""
    from camkit.bench import runner

    calls = []
    real = runner._maps
    monkeypatch.setattr(runner, "_maps", lambda model, method, b, config, targets=None: (
        calls.append((method, len(b.indices))), real(model, method, b, config, targets))[1])
    monkeypatch.setattr(runner, "_WARMED", set())
    config = BenchConfig(**{**CONFIG.__dict__, "protocol": Protocol(perturbation_steps=2, box_thresholds=5, sanity=False)})
    for start in (0, 2):
        list(run_shard(Shard("digits_resnet=random", "images", start, start + 2, ("gradcam", "layercam")), config))
    assert calls == [("gradcam", 1), ("gradcam", 2), ("layercam", 1), ("layercam", 2), ("gradcam", 2), ("layercam", 2)]
