"""The ``camkit`` command: help everywhere, list, explain, readable errors with exit status 1, report,
the console script and the demo's wiring (on a tiny configuration)."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import camkit.methods
from camkit.bench.config import BenchConfig, Protocol
from camkit.cli import build_parser, main

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("command", [[], ["explain"], ["bench"], ["demo"], ["report"], ["list"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: camkit" in capsys.readouterr().out


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("gradcam++", "scorecam", "guided-gradcam", "efficientnet_lite0", "digits_vit", "folder:PATH", "local"):
        assert needle in out


@pytest.fixture()
def images(tmp_path):
    from camkit import viz
    from camkit.data import digits

    paths = []
    for i, s in enumerate(digits(2, seed=5)):
        p = tmp_path / f"in {i}.png"
        viz.to_pil(s.image).save(p)
        paths.append(str(p))
    return paths


def test_explain_writes_overlays_and_raw_maps(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", *images, "--model", "digits_resnet", "--weights", "random", "--method",
                 "gradcam,guided-gradcam", "--target", "top2", "--threads", "1", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("in 0.png:") == 1 and "(" in printed  # predicted classes with probabilities
    files = sorted(p.name for p in out.iterdir())
    assert "in_0_gradcam_k1.png" in files and "in_1_gradcam_k2.npy" in files
    assert "in_0_guided-gradcam_k2.png" in files
    m = np.load(out / "in_0_gradcam_k1.npy")
    assert m.shape == (64, 64) and 0.0 <= m.min() and m.max() <= 1.0
    assert np.load(out / "in_0_guided-gradcam_k1.npy").shape == (3, 64, 64)


def test_explain_class_target_by_name_and_index(images, tmp_path):
    out = tmp_path / "o"
    assert main(["explain", images[0], "--model", "digits_vgg", "--weights", "random", "--method", "layercam",
                 "--target", "7", "--threads", "1", "-o", str(out)]) == 0
    assert (out / "in_0_layercam.png").is_file()


def test_explain_with_defaults_writes_gradcam_into_camkit_explain(images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", images[0], "--model", "digits_resnet", "--threads", "1"]) == 0
    out = tmp_path / "camkit-explain"
    assert sorted(p.name for p in out.iterdir()) == ["in_0_gradcam.npy", "in_0_gradcam.png"]
    assert f"maps written to {out.resolve()}" in capsys.readouterr().out
    m = np.load(out / "in_0_gradcam.npy")
    import camkit
    from camkit.bench import load_model
    from camkit.data import resize_image
    from camkit.data.imageio import read_image

    model = load_model("digits_resnet")
    x = resize_image(read_image(images[0]), tuple(model.input_size))[None]
    torch.testing.assert_close(torch.from_numpy(m), camkit.GradCAM(model, layer=model.default_layer)(x)[0])  # top-1


def _empty_data(tmp_path: Path) -> list[tuple[str, str]]:
    """(--data, where the error must say camkit looked) for data that yields no image."""
    (tmp_path / "empty").mkdir()
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "boxes.json").write_text('{"images": [{"file": "gone.png", "label": 1, "boxes": []}]}')
    return [("digits:0", "digits:0 asks for 0"), (f"folder:{tmp_path / 'empty'}", str(tmp_path / "empty")),
            (f"folder:{listed}", "missing_image: 1")]


def test_no_images_is_an_error_that_says_where_camkit_looked(tmp_path, capsys):
    for data, where in _empty_data(tmp_path):
        out = tmp_path / "out"
        assert main(["bench", "--models", "digits_resnet=random", "--methods", "gradcam", "--data", data,
                     "-q", "-o", str(out)]) == 1, data
        err = capsys.readouterr().err
        assert "no images were found" in err and where in err, err
        assert not out.exists()  # no empty report


@pytest.mark.parametrize("argv, message", [
    (["bench", "--models", "nosuchnet", "--data", "digits:2"], "unknown model"),
    (["bench", "--models", "digits_resnet", "--data", "nosuchdata"], "unknown data"),
    (["bench", "--models", "digits_resnet", "--methods", "gradcamm"], "unknown method"),
    (["bench", "--models", "digits_resnet", "--data", "folder:/no/such/dir"], "does not exist"),
    (["explain", "missing.png", "--model", "digits_resnet", "--method", "gradcam", "-o", "x"], "cannot read image"),
    (["report", "/no/such/run"], "not a camkit run directory"),
])
def test_errors_are_one_readable_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_target_parsing():
    from camkit import TopK
    from camkit.cli.explain import _target

    cats = ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert _target("top1", cats) is None and _target("top3", cats) == TopK(3)
    assert _target("1", cats) == 1 and _target("goldfish", cats) == 1
    with pytest.raises(Exception, match="--target"):
        _target("whale", cats)


def test_report_command_rewrites_tables(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--models", "digits_resnet=random", "--methods", "gradcam", "--data", "digits:3", "--steps", "2",
            "--batch-size", "3", "--no-baselines", "--threads", "1", "-q", "-o", str(out)]
    assert main(argv) == 0
    assert "report:" in capsys.readouterr().out
    table = (out / "table.md").read_text()
    (out / "table.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "table.md").read_text() == table


def test_console_script_and_module_entry(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "camkit", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "methods:" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "camkit", "bench", "--models", "x", "--data", "digits:1", "-o",
                          str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown model" in bad.stderr


def test_demo_parts_cover_the_survey_setup():
    from camkit.bench.demo import demo_parts
    from camkit.bench.plan import resolve_methods

    photos, digits = demo_parts()
    assert photos.config.models == ("efficientnet_lite0",) and photos.config.data == "samples"
    assert digits.config.models == ("digits_resnet", "digits_vgg", "digits_vit")
    assert digits.config.methods == photos.config.methods == resolve_methods("all")
    expensive = {m for m in resolve_methods("all", include_expensive=True) if camkit.methods.get(m).expensive}
    assert "scorecam" in expensive and "sess" in expensive
    assert set(resolve_methods("all", include_expensive=True)) - set(photos.config.methods) == expensive
    assert all(m in photos.config.note for m in expensive) and "dff" in photos.config.note  # with the reasons
    assert set(demo_parts(include_expensive=True)[1].config.methods) >= expensive


def test_run_demo_writes_index_and_tables(tmp_path):
    from camkit.bench.demo import DemoPart, run_demo

    tiny = BenchConfig(models=("digits_resnet=random",), methods=("gradcam",), data="digits:2", batch_size=2,
                       protocol=Protocol(perturbation_steps=2, box_thresholds=4, baselines=()), figure_images=1)
    torch.set_num_threads(1)
    parts = [DemoPart("a", "Part <A>", tiny), DemoPart("b", "Part B", dataclasses.replace(tiny, data="digits:3"))]
    demo = run_demo(tmp_path, progress=False, parts=parts)
    index = demo.index
    assert len(demo.results) == 2
    page = index.read_text()
    assert "Part &lt;A&gt;" in page
    for ref in re.findall(r'href="([^"]+)"', page):
        assert (tmp_path / ref).is_file()
    table = (tmp_path / "table.md").read_text()
    assert table.count("## Table 8") == 2 and "# Part B" in table


def test_parser_has_engine_option():
    args = build_parser().parse_args(["bench", "--models", "m", "--engine", "local"])
    assert args.engine == "local" and args.resume is True and args.threads == "auto"
