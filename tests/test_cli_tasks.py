"""``camkit explain --task detect|segment``: a warning for random weights, at most ``--max-maps`` maps
per image and method (the rest counted), and ``--precision`` / ``--channels-last`` / ``--layer`` /
``--layout`` / ``--size`` applied as in ``--task classify`` (``--fit`` and ``--size model`` refused)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit
import camkit.bench.sources as sources
import camkit.cli.explain as explain_module
from camkit.cli import main
from camkit.data.imageio import read_image
from camkit.targets import Detection, Segmentation

from task_models import ToySeg, tiny_detector


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _png(path, h, w):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def _serve(monkeypatch, model):
    monkeypatch.setattr(sources, "load_model", lambda spec, device="cpu", options=(): model)


def test_detect_caps_the_maps_warns_and_runs_in_the_asked_precision(tmp_path, monkeypatch, capsys):
    img = _png(tmp_path / "street.png", 48, 60)
    det = tiny_detector(box_detections_per_img=12)
    _serve(monkeypatch, det)
    x = read_image(img)[None]
    with torch.no_grad():
        pred = det(x)[0]
    n = len(pred["scores"])
    assert n > 3  # the cap below must leave detections out
    out = tmp_path / "d"
    assert main(["explain", img, "--model", "torchvision:x", "--task", "detect", "--min-score", "0", "--max-maps", "3",
                 "--method", "gradcam", "--layer", "backbone.feat", "--precision", "bf16", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "imagenet" not in err
    assert f"{n} detections score >= 0.0; explaining the first 3 ({n - 3} left out: --max-maps {n} explains all)" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["street_detections.png"] + [f"street_gradcam_det{k}.{ext}" for k in (1, 2, 3) for ext in ("png", "npy")])
    top = pred["scores"].argsort(descending=True)[:3]
    target = Detection([pred["boxes"][top]], [pred["labels"][top]], each=True)
    want = camkit.GradCAM(det, layer="backbone.feat", precision="bf16").explain(x, targets=target).maps[0]
    fp32 = camkit.GradCAM(det, layer="backbone.feat").explain(x, targets=target).maps[0]
    for k in range(3):
        got = torch.from_numpy(np.load(out / f"street_gradcam_det{k + 1}.npy"))
        torch.testing.assert_close(got, want[k])
    assert not torch.equal(want, fp32)  # so the equality above says --precision reached the method


def test_detect_with_nothing_above_min_score_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    img = _png(tmp_path / "empty.png", 48, 60)
    _serve(monkeypatch, tiny_detector())
    out = tmp_path / "d"
    assert main(["explain", img, "--model", "torchvision:x", "--task", "detect", "--min-score", "1.5",
                 "--layer", "backbone.feat", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no detection scores >= 1.5" in err and "lower --min-score" in err and "min_score" not in err
    assert list(out.iterdir()) == []


def test_segment_keeps_the_largest_classes_at_the_asked_size(tmp_path, monkeypatch, capsys):
    stripes = torch.zeros(3, 40, 56)  # red, green, blue thirds: two classes of different sizes for this seed
    stripes[0, :, :20], stripes[1, :, 20:40], stripes[2, :, 40:] = 1.0, 1.0, 1.0
    img = str(tmp_path / "scene.png")
    camkit.viz.to_pil(stripes).save(img)
    seg = ToySeg(kind="dict", classes=3, seed=5).eval()
    _serve(monkeypatch, seg)
    x = read_image(img)[None]
    with torch.no_grad():
        counts = torch.bincount(seg(x)["out"][0].argmax(0).flatten(), minlength=3)
    present = int((counts > 0).sum())
    assert present >= 2
    largest = int(counts.argmax())
    out = tmp_path / "s"
    assert main(["explain", img, "--model", "torchvision:y", "--task", "segment", "--method", "gradcam", "--layer",
                 "feat", "--max-maps", "1", "--size", "28", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{present} classes asked for; explaining the first 1" in err
    assert sorted(p.name for p in out.iterdir()) == [f"scene_gradcam_{largest}.npy", f"scene_gradcam_{largest}.png"]
    got = torch.from_numpy(np.load(out / f"scene_gradcam_{largest}.npy"))
    assert got.shape == (20, 28)  # --size 28: the longer side, the image's aspect
    full = camkit.GradCAM(seg, layer="feat").explain(x, targets=Segmentation([[largest]])).maps[0, 0]
    torch.testing.assert_close(got, camkit.viz.to_original(full, (20, 28)))


@pytest.mark.parametrize("extra, message", [
    (["--fit", "letterbox"], "--fit applies to --task classify"),
    (["--size", "model"], "--size model applies to --task classify"),
    (["--max-maps", "0"], "--max-maps must be >= 1"),
])
def test_options_that_do_not_apply_are_refused(extra, message, tmp_path, monkeypatch, capsys):
    img = _png(tmp_path / "street.png", 48, 60)
    _serve(monkeypatch, tiny_detector())
    assert main(["explain", img, "--model", "torchvision:x", "--task", "detect", *extra, "-o", str(tmp_path / "d")]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_every_task_builds_its_methods_with_the_options_given(task, tmp_path, monkeypatch):
    """--layer (several: fused), --layout, --precision and --channels-last reach each method's constructor."""
    seen = []

    class Spy(camkit.GradCAM):
        def __init__(self, model, **kw):
            seen.append(kw)
            super().__init__(model, **kw)

    monkeypatch.setattr(explain_module, "get", lambda name: Spy)
    img = _png(tmp_path / "a.png", 64, 64)
    if task == "detect":
        _serve(monkeypatch, tiny_detector())
        argv = ["--model", "torchvision:x", "--task", "detect", "--min-score", "0", "--max-maps", "1",
                "--layer", "backbone.stem,backbone.feat"]
    else:
        argv = ["--model", "digits_resnet", "--layer", "layer3,layer4"]
    assert main(["explain", img, *argv, "--layout", "nchw", "--precision", "bf16", "--channels-last", "--threads", "1",
                 "-o", str(tmp_path / "o")]) == 0
    assert seen and all(kw["layout"] == "nchw" and kw["precision"] == "bf16" and kw["channels_last"] for kw in seen)
    assert all(len(kw["layer"]) == 2 for kw in seen)


def test_classify_on_a_detector_names_the_task_flag(tmp_path, monkeypatch, capsys):
    img = _png(tmp_path / "street.png", 48, 60)
    _serve(monkeypatch, tiny_detector())
    assert main(["explain", img, "--model", "torchvision:x", "-o", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "torchvision:x is a detection model: explain it with --task detect" in err and "targets=" not in err
