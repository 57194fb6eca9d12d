"""``camkit explain`` on a video file and a NIfTI volume with the bundled 3-D nets; the bench on their sets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camkit.cli import main
from camkit.data import digit_volumes, moving_digits

av = pytest.importorskip("av")
nib = pytest.importorskip("nibabel")


def clip_file(path, seed: int = 7) -> str:
    """A moving-digits clip written as an intra-only MP4 (each frame decodes alone)."""
    s = moving_digits(1, seed=seed)[0]
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=4)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        st.codec_context.gop_size = 1
        for t in range(8):
            a = np.ascontiguousarray((s.image[:, t].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            for p in st.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return str(path)


def test_explain_a_video_writes_a_frame_strip_a_gif_and_the_map(tmp_path, capsys):
    from PIL import Image

    path = clip_file(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert main(["explain", path, "--model", "moving_digits_net", "--method", "gradcam,guided-backprop",
                 "--target", "top2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clip.mp4:" in printed and "clip_gradcam_k1_strip.png" in printed
    for k in (1, 2):
        assert np.load(out / f"clip_gradcam_k{k}.npy").shape == (8, 32, 32)
        with Image.open(out / f"clip_gradcam_k{k}.gif") as gif:
            assert gif.n_frames == 8
        with Image.open(out / f"clip_gradcam_k{k}_strip.png") as strip:
            assert strip.width > 6 * strip.height  # eight frames side by side
    assert np.load(out / "clip_guided-backprop_k1.npy").shape == (3, 8, 32, 32)  # signed, per channel


def test_explain_a_nifti_writes_a_map_aligned_with_the_scan_and_its_slices(tmp_path, capsys):
    s = digit_volumes(1, seed=3)[0]
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    # stored on a finer grid than the net's 32^3: the map must come back on it
    fine = torch.nn.functional.interpolate(s.image[None], size=(40, 36, 30), mode="trilinear", align_corners=False)[0, 0]
    nib.save(nib.Nifti1Image((fine.numpy() * 1000).astype(np.int16), affine), str(tmp_path / "scan.nii.gz"))
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "scan.nii.gz"), "--model", "digit_volumes_net", "-o", str(out)]) == 0
    assert "scan_gradcam_slices.png" in capsys.readouterr().out
    img = nib.load(str(out / "scan_gradcam.nii.gz"))
    assert img.shape == (40, 36, 30)
    np.testing.assert_allclose(img.affine, affine)
    raw = np.load(out / "scan_gradcam.npy")
    assert raw.shape == (32, 32, 32) and float(raw.max()) == pytest.approx(1.0)
    assert (out / "scan_gradcam_slices.png").stat().st_size > 0


def test_a_video_for_an_image_model_and_mixed_inputs_are_clear_errors(tmp_path, capsys):
    path = clip_file(tmp_path / "clip.mp4")
    assert main(["explain", path, "--model", "digits_resnet", "-o", str(tmp_path / "o")]) == 1
    assert "takes images of size (64, 64), not clip" in capsys.readouterr().err
    png = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    assert main(["explain", path, str(png), "--model", "moving_digits_net", "-o", str(tmp_path / "o")]) == 1
    assert "separate calls" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing.mp4"), "--model", "moving_digits_net", "-o", str(tmp_path / "o")]) == 1
    assert "missing.mp4" in capsys.readouterr().err


def _check_maps(records: list[dict]) -> None:
    maps = [r for r in records if r["type"] == "map" and r["kind"] == "top1"]
    assert {r["method"] for r in maps} >= {"gradcam", "baseline:uniform"}, [r for r in records if r["type"] == "error"]
    for r in maps:
        assert 0.0 <= r["pointing"] <= 1.0 and 0.0 <= r["energy"] <= 1.0 and 0.0 <= r["iou"] <= 1.0
        assert r["deletion"] is not None and r["insertion"] is not None


@pytest.mark.parametrize("data, model, road", [("moving_digits:2", "moving_digits_net", True),
                                                ("digit_volumes:2", "digit_volumes_net", False)])
def test_bench_shard_on_the_clip_and_volume_sets(data, model, road):
    from camkit.bench.config import BenchConfig, Protocol
    from camkit.bench.plan import Shard
    from camkit.bench.runner import run_shard
    from camkit.bench.sources import load_source

    assert len(load_source(data)) == 2
    methods = ("gradcam", "baseline:uniform")
    protocol = Protocol(perturbation_steps=4, box_thresholds=4, road=road, road_percentiles=(50.0,), arcc=False,
                        sanity=False)  # ROAD on 32^3 volumes takes ~30 s each: off there
    config = BenchConfig(models=(model,), methods=methods, data=data, batch_size=2, protocol=protocol, figure_images=0)
    records = list(run_shard(Shard(model, "images", 0, 2, methods), config))
    _check_maps(records)
    if road:
        assert all(-0.5 <= r["road"] <= 0.5 for r in records if r["type"] == "map" and r["kind"] == "top1")
