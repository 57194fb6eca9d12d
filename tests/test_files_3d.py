"""Video files (PyAV) and NIfTI volumes (nibabel): written here, read back, maps written aligned."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from camkit.errors import InputError

av = pytest.importorskip("av")
nib = pytest.importorskip("nibabel")

from camkit.data.video import read_video, sample_indices, save_animation  # noqa: E402
from camkit.data.volume import peak_voxel, read_volume, slices_through, write_map  # noqa: E402


def bar_video(path: Path, n: int = 10, size: int = 32, codec: str = "mpeg4") -> Path:
    """Frame i: black with a white vertical bar at columns 3i .. 3i+2 (intra-only: each frame alone)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=8)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = 1
        for i in range(n):
            a = np.zeros((size, size, 3), np.uint8)
            a[:, 3 * i:3 * i + 3] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def bar_column(frame: torch.Tensor) -> int:
    """Column of the bar's centre in a (3, H, W) frame: the mean of the columns brighter than half."""
    cols = (frame.mean((0, 1)) > 0.5).nonzero().flatten().float()
    return int(cols.mean().round())


def test_sample_indices_are_segment_centres():
    assert sample_indices(10, 4) == [1, 3, 6, 8]  # floor((i + 0.5) * 10 / 4)
    assert sample_indices(3, 5) == [0, 0, 1, 2, 2]  # a short video repeats frames
    assert sample_indices(16, 16) == list(range(16))


def test_read_video_samples_resizes_and_keeps_originals(tmp_path):
    clip = read_video(bar_video(tmp_path / "bars.mp4"), frames=4, size=(16, 16))
    assert clip.clip.shape == (1, 3, 4, 16, 16) and clip.frames.shape == (4, 3, 32, 32)
    assert clip.indices == (1, 3, 6, 8) and clip.decoded == 10 and clip.skipped == 0 and clip.fps == 8.0
    assert [bar_column(f) for f in clip.frames] == [4, 10, 19, 25]  # bar at 3i .. 3i+2: centre 3i + 1
    assert [bar_column(clip.clip[0, :, t]) for t in range(4)] == [2, 5, 9, 12]  # halved
    assert 0.0 <= float(clip.clip.min()) and float(clip.clip.max()) <= 1.0


def test_a_corrupt_frame_is_skipped_and_counted(tmp_path):
    path = bar_video(tmp_path / "bad.mp4")
    with av.open(str(path)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[3]
    data[pos:pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    clip = read_video(path, frames=9)
    assert clip.skipped == 1 and clip.decoded == 9
    assert [bar_column(f) for f in clip.frames] == [1, 4, 7, 13, 16, 19, 22, 25, 28]  # frame 3 (column 10) gone


def test_unreadable_videos_are_errors_naming_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(InputError, match="junk.mp4"):
        read_video(junk, frames=4)
    with pytest.raises(InputError, match="missing.mp4.*no such file"):
        read_video(tmp_path / "missing.mp4", frames=4)
    with pytest.raises(InputError, match="frames must be a positive int"):
        read_video(bar_video(tmp_path / "ok.mp4"), frames=0)


def test_animations_round_trip(tmp_path):
    from PIL import Image

    frames = [np.full((15, 21, 3), 40 * i, np.uint8) for i in range(5)]
    gif = save_animation(tmp_path / "a.gif", frames, fps=5)
    with Image.open(gif) as im:
        assert im.n_frames == 5 and im.size == (21, 15) and im.info["duration"] == 200
    mp4 = save_animation(tmp_path / "a.mp4", [Image.fromarray(f) for f in frames], fps=5)
    back = read_video(mp4, frames=5)
    assert back.decoded == 5 and back.frames.shape == (5, 3, 16, 22)  # odd sides padded to even
    assert back.frames[:, :, :15, :21].mean((1, 2, 3)).mul(255).round().tolist() == pytest.approx(
        [0, 40, 80, 120, 160], abs=3)
    with pytest.raises(InputError, match=".gif or .mp4"):
        save_animation(tmp_path / "a.png", frames)


# ------------------------------------------------------------------------------------------ volumes


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels (0.8, 1.5, 3.0 mm), rotated 30 degrees about z, translated."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.8, 1.5, 3.0])
    a[:3, 3] = [-40.0, 12.5, 7.0]
    return a


def blob_nifti(path: Path, shape=(37, 29, 23), centre=(20, 9, 15), sigma=2.5) -> Path:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    data = 100 + 900 * np.exp(-((grid - np.array(centre)) ** 2).sum(-1) / (2 * sigma**2))
    img = nib.Nifti1Image(data.astype(np.int16), oblique_affine())
    img.header.set_slope_inter(0.5, -3.0)  # stored scaled: read_volume must apply it
    nib.save(img, str(path))
    return path


def world_of_max(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    a = np.asarray(img.get_fdata())
    idx = np.array(np.unravel_index(a.argmax(), a.shape), dtype=float)
    return img.affine[:3, :3] @ idx + img.affine[:3, 3]


@pytest.mark.parametrize("size", [(16, 16, 16), (37, 29, 23), (9, 20, 31)])
def test_map_written_back_keeps_shape_affine_and_the_maximum_world_coordinate(tmp_path, size):
    src = blob_nifti(tmp_path / "scan.nii.gz")
    vol = read_volume(src, size)
    assert vol.tensor.shape == (1, 1, *size) and vol.shape == (37, 29, 23)
    assert vol.spacing == pytest.approx((0.8, 1.5, 3.0))
    assert float(vol.data.min()) == 0.0 and float(vol.data.max()) == 1.0  # min-max of the scaled values
    out = write_map(tmp_path / "map.nii.gz", vol.tensor[0, 0], vol)  # the "map" is the scan itself
    back = nib.load(str(out))
    assert back.shape == (37, 29, 23)
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-5)
    assert back.header.get_sform(coded=True)[1] == nib.load(str(src)).header.get_sform(coded=True)[1]
    # the scan's maximum is the blob centre; the map's maximum lands within half a model voxel of it
    half_model_voxel = 0.5 * np.linalg.norm(np.array([0.8, 1.5, 3.0]) * np.array((37, 29, 23)) / np.array(size))
    assert np.linalg.norm(world_of_max(out) - world_of_max(src)) <= half_model_voxel + 1e-6
    if size == (37, 29, 23):  # no resampling: exact
        np.testing.assert_allclose(world_of_max(out), vol.world([20, 9, 15]), atol=1e-5)


def test_a_delta_on_the_model_grid_lands_where_the_inverse_resampling_says(tmp_path):
    vol = read_volume(blob_nifti(tmp_path / "scan.nii"), (16, 16, 16))
    m = torch.zeros(16, 16, 16)
    j = (3, 11, 6)
    m[j] = 1.0
    back = np.asarray(nib.load(str(write_map(tmp_path / "delta.nii", m, vol))).get_fdata())
    # model voxel j of m along an axis of n original voxels sits at original voxel (j + 0.5) n / m - 0.5
    expected = [round((jj + 0.5) * n / 16 - 0.5) for jj, n in zip(j, (37, 29, 23))]
    assert list(np.unravel_index(back.argmax(), back.shape)) == expected  # (7, 20, 9)
    assert peak_voxel(m) == j


def test_channels_slices_and_bad_volumes(tmp_path):
    src = blob_nifti(tmp_path / "scan.nii.gz", shape=(12, 10, 8), centre=(6, 5, 4), sigma=1.5)
    vol = read_volume(src, (8, 8, 8), channels=3)
    assert vol.tensor.shape == (1, 3, 8, 8, 8) and torch.equal(vol.tensor[0, 0], vol.tensor[0, 2])
    a, b, c = slices_through(vol.data[0], (6, 5, 4))
    assert (a.shape, b.shape, c.shape) == ((10, 8), (12, 8), (12, 10))
    assert float(a.max()) == float(b.max()) == float(c.max()) == 1.0  # all three cross the maximum
    two = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4, 2)).astype(np.float32), np.eye(4))
    nib.save(two, str(tmp_path / "two.nii"))
    assert read_volume(tmp_path / "two.nii").tensor.shape == (1, 2, 6, 5, 4)
    with pytest.raises(InputError, match="2 channels; the model takes 3"):
        read_volume(tmp_path / "two.nii", channels=3)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_volume(bad)
    flat = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    nib.save(flat, str(tmp_path / "flat.nii"))
    with pytest.raises(InputError, match="constant"):
        read_volume(tmp_path / "flat.nii")
    with pytest.raises(InputError, match=".nii or .nii.gz"):
        write_map(tmp_path / "m.png", torch.zeros(8, 8, 8), vol)
