"""The verdict ("which map to trust") on synthetic records whose answer is known, the bench's new
columns and method selection, and one small end-to-end run on the bundled digits."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from camkit.bench import BenchConfig, Protocol, run_shard
from camkit.bench import runner
from camkit.bench.html import render
from camkit.bench.plan import Shard, select_methods
from camkit.bench.report import markdown, summarize
from camkit.bench.session import summary_text
from camkit.bench.verdict import NONE_QUALIFIES, RULE, SANITY_THRESHOLD, verdict, verdict_lines
from camkit.cli import main
from camkit.errors import CamkitError

N = 40
BASELINES = ("uniform", "center_gaussian", "random")


def _records(spec: dict[str, dict[str, tuple[float, float]]], model: str = "m", seed: int = 0) -> list[dict]:
    """Map records of ``model``: per method, per metric ``(mean, sd)`` of N per-image values (normal)."""
    rng = np.random.default_rng(seed)
    out = []
    for method, metrics in spec.items():
        values = {k: rng.normal(mu, sd, N) for k, (mu, sd) in metrics.items()}
        for i in range(N):
            r = {"type": "map", "model": model, "method": method, "index": i, "kind": "top1", "image": f"i{i}"}
            r.update({k: float(v[i]) for k, v in values.items()})
            out.append(r)
    return out


def _base(road: float = 0.0) -> dict[str, tuple[float, float]]:
    return {"road": (road, 0.03), "deletion": (0.5, 0.05), "insertion": (0.5, 0.05), "sanity": (1.0, 0.0)}


def _summary(methods: dict[str, dict[str, tuple[float, float]]], seed: int = 0):
    spec = {**methods, **{f"baseline:{b}": _base() for b in BASELINES}}
    config = BenchConfig(models=("m",), methods=tuple(methods), protocol=Protocol())
    s = summarize(_records(spec, seed=seed), config)
    s.verdict = verdict_lines(s)
    return s


def _good(road: float = 0.3, sanity: float = 0.1, deletion: float = 0.3) -> dict[str, tuple[float, float]]:
    return {"road": (road, 0.03), "deletion": (deletion, 0.03), "insertion": (0.6, 0.03), "sanity": (sanity, 0.05)}


def test_one_method_qualifies():
    s = _summary({
        "gradcam": _good(),
        "layercam": _good(road=0.0),  # no better than the baseline maps
        "eigencam": _good(sanity=0.9),  # beats the baselines, but ignores the model's weights
        "randomcam": _good(road=0.1),  # a declared sanity baseline: compared against, never recommended
    })
    v = verdict(s, "m")
    assert v.ranking == [["gradcam"]] and v.trusted == ["gradcam"]
    assert "does not beat every baseline" in v.rejected["layercam"]
    assert "randomised" in v.rejected["eigencam"] and f">= {SANITY_THRESHOLD:g}" in v.rejected["eigencam"]
    assert "randomcam" not in v.rejected and "randomcam" not in v.ranking[0]
    tests = {t.metric: t for t in s.tests if t.method == "gradcam"}
    assert tests["road"].beats_every_baseline  # RandomCAM among the baselines it beats
    assert re.fullmatch(r"m: trust gradcam \(ROAD combined 0\.(29|30)\d\d, beats every baseline\)", v.headline())
    md = markdown(s)
    assert md.index("## Which map to trust") < md.index("## Table 8") and "trust gradcam" in md and RULE in md


def test_no_method_qualifies_says_so_and_the_headline_follows():
    s = _summary({"gradcam": _good(road=0.01), "layercam": _good(road=-0.05, sanity=0.9)})
    v = verdict(s, "m")
    assert v.ranking == [] and v.trusted == []
    assert v.headline() == f"m: {NONE_QUALIFIES}" and NONE_QUALIFIES == "no method beats the baselines on this model and data"
    md, page = markdown(s), render(s, [], [], {})
    assert NONE_QUALIFIES in md and "trust " not in md.split("## Table 8")[0]
    assert page.index("Which map to trust") < page.index("Table 8") and 'class="verdict none"' in page


def test_ties_where_paired_tests_cannot_separate_and_tie_breaks_on_deletion():
    s = _summary({
        "gradcam": _good(road=0.3),
        "xgradcam": _good(road=0.3),  # same ROAD and deletion as gradcam: a tie
        "hirescam": _good(road=0.3, deletion=0.1),  # same ROAD, clearly better (lower) deletion: first
        "layercam": _good(road=0.15),  # qualifies, significantly below on ROAD: last
    })
    v = verdict(s, "m")
    assert v.ranking[0] == ["hirescam"]
    assert sorted(v.ranking[1]) == ["gradcam", "xgradcam"]
    assert v.ranking[2:] == [["layercam"]]
    s2 = _summary({"gradcam": _good(road=0.3), "xgradcam": _good(road=0.3)}, seed=1)
    tied = verdict(s2, "m")
    assert len(tied.ranking) == 1 and sorted(tied.trusted) == ["gradcam", "xgradcam"]
    assert "tied: the paired tests cannot separate them" in tied.headline()


def test_select_methods_leaves_out_with_reasons_read_from_attributes():
    methods, left = select_methods("all")
    assert "gradcam" in methods and "randomcam" in methods and "legrad" in methods
    for name in ("scorecam", "sess", "dff", "segeigencam", "guided-gradcam"):
        assert name not in methods
    text = "\n".join(left)
    assert re.search(r"dff: output='concepts'", text) and "segeigencam: designed for segmentation" in text
    assert "scorecam: expensive" in text and "--include-expensive" in text
    assert "scorecam" in select_methods("all", include_expensive=True)[0]
    assert select_methods("scorecam")[0] == ("scorecam",)  # named: runs even though expensive
    with pytest.raises(CamkitError, match="output='concepts'"):
        select_methods("dff")


def test_shard_records_road_arcc_seeds_and_leaves_out_unmet_requirements(one_thread):
    config = BenchConfig(models=("digits_resnet=random",), methods=("randomcam", "legrad"), data="digits:2",
                         batch_size=2, protocol=Protocol(perturbation_steps=2, box_thresholds=4, seed=3,
                                                         road_percentiles=(25.0, 75.0)), figure_images=0)
    recs = list(run_shard(Shard("digits_resnet=random", "images", 0, 2, ("randomcam", "legrad")), config))
    left = [r for r in recs if r["type"] == "error"]
    assert len(left) == 1 and left[0]["left_out"] and left[0]["method"] == "legrad"
    assert "transformer blocks with attention" in left[0]["error"] and "digits_resnet" in left[0]["error"]
    top1 = [r for r in recs if r["type"] == "map" and r["kind"] == "top1"]
    assert len(top1) == 2
    for r in top1:
        assert r["method_seed"] == 0 and r["road_seed"] == 3  # RandomCAM's default seed; the run's ROAD seed
        assert -0.5 <= r["road"] <= 0.5 and 0 <= r["arcc"] <= 1 and 0 <= r["coherency"] <= 1
        assert r["complexity"] == pytest.approx(0.0, abs=1.0) and r["protocol"]["road_percentiles"] == [25.0, 75.0]
    least = [r for r in recs if r["type"] == "map" and r["kind"] == "least"]
    assert all(r["road"] is None for r in least)


def test_fullgrad_randomisation_curve_explains_the_layers_of_its_maps(monkeypatch, one_thread):
    """The report contradicted itself: the curve used the model's default layer, the maps every
    biased layer. Both now come from one factory."""
    config = BenchConfig(models=("digits_resnet=random",), methods=("fullgrad",), data="digits:1",
                         batch_size=1, protocol=Protocol(perturbation_steps=2, box_thresholds=4), figure_images=1)
    model = runner.load_model("digits_resnet=random", "cpu")
    x = torch.rand(1, 3, 32, 32)
    seen = {}

    def fake_test(factory, model, x, targets, **kw):
        seen["layers"] = list(factory(model).explain(x, targets=targets).layers)
        raise RuntimeError("stop")

    monkeypatch.setattr(runner.metrics, "randomization_test", fake_test)
    b = runner.Batch([0], [None], x, torch.zeros(1, 10), torch.zeros(1, 2, dtype=torch.long), ("top1", "least"), [True])
    runner._randomization_record(Shard("digits_resnet=random", "figures", 0, 1, ("fullgrad",)), model, b, config, 1)
    _, layers = runner._maps(model, "fullgrad", b, config)
    assert len(layers) > 1 and seen["layers"] == layers


def test_report_tables_fit_a_1400px_window(tmp_path):
    """Every table sits in a container that scrolls sideways, so the page itself never overflows a
    1400 px window; checked in Chromium when it is installed."""
    methods = {f"m{i}": _good() for i in range(3)} | {"gradcam": _good(), "xgradcam": _good()}
    spec = {**methods, **{f"baseline:{b}": _base() for b in BASELINES}}
    models = [f"a_rather_long_model_name_{k}" for k in range(4)]
    recs = [r for k, mo in enumerate(models) for r in _records(spec, model=mo, seed=k)]
    config = BenchConfig(models=tuple(models), methods=tuple(methods), protocol=Protocol())
    s = summarize(recs, config)
    s.verdict = verdict_lines(s)
    page = render(s, recs, [], {"data": "synthetic"})
    assert page.count("<table") == page.count('<div class="scroll"><table')
    assert re.search(r"\.scroll\{[^}]*overflow-x:auto", page)
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    from test_serve_live import CHROMEDRIVER, CHROMIUM, _chrome

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()) and not os.environ.get("CI"):
        pytest.skip("chromium not installed")
    driver = _chrome(tmp_path / "profile")
    try:
        driver.get(path.as_uri())
        inner = driver.execute_script("return window.innerWidth")
        widths = driver.execute_script("return [document.documentElement.scrollWidth, "
                                       "Math.max(...[...document.querySelectorAll('table')].map(t => t.scrollWidth))]")
    finally:
        driver.quit()
    assert widths[1] > inner  # the widest table is wider than the window ...
    assert widths[0] <= inner  # ... and the page does not overflow: the table scrolls in its box


def test_recommend_end_to_end_on_the_bundled_digits(tmp_path, capsys, one_thread):
    threads = torch.get_num_threads()
    try:
        code = main(["recommend", "--model", "digits_resnet", "--data", "digits:6", "--limit", "6",
                     "--methods", "gradcam,layercam", "--batch-size", "6", "--threads", "1", "-q",
                     "-o", str(tmp_path / "r")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("Which map to trust:") and "Verdict rule:" in out
    assert "digits_resnet: trust " in out or NONE_QUALIFIES in out
    assert "best IoU" not in out
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert page.index("Which map to trust") < page.index("Table 8")
    assert "ROAD combined" in page and "ARCC" in page
