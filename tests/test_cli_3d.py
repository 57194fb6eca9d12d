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


def test_bench_on_the_clip_and_volume_sets(tmp_path, capsys):
    for data, model in (("moving_digits:3", "moving_digits_net"), ("digit_volumes:3", "digit_volumes_net")):
        out = tmp_path / data.split(":")[0]
        assert main(["bench", "--models", model, "--methods", "gradcam", "--data", data, "--batch-size", "3",
                     "--steps", "4", "--gallery", "1", "-o", str(out), "-q"]) == 0
        maps = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        maps = [r for r in maps if r["type"] == "map" and r["kind"] == "top1"]
        assert {r["method"] for r in maps} >= {"gradcam", "baseline:uniform"}
        for r in maps:
            assert 0.0 <= r["pointing"] <= 1.0 and 0.0 <= r["energy"] <= 1.0 and 0.0 <= r["iou"] <= 1.0
            assert r["deletion"] is not None and r["insertion"] is not None
        assert "gradcam" in (out / "table.md").read_text()
    capsys.readouterr()
