"""The documented viz API: every image form converted right, maps back on the original image through
the preprocessing geometry, labelled grids, and the CLI writing pictures at the image's own size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import camkit
from camkit import viz
from camkit.data.geometry import fit
from toy_models import GapNet


def _photo(h: int = 26, w: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_every_image_form_gives_the_same_overlay():
    u8 = _photo()
    m = torch.rand(5, 7)
    ref = np.asarray(viz.overlay(u8.astype(np.float32) / 255, m))
    forms = [Image.fromarray(u8), u8, torch.from_numpy(u8), torch.from_numpy(u8).permute(2, 0, 1),
             np.moveaxis(u8, -1, 0), torch.from_numpy(u8).permute(2, 0, 1).float() / 255,
             np.dstack([u8, np.full(u8.shape[:2], 255, np.uint8)])]  # RGBA
    for form in forms:
        np.testing.assert_array_equal(np.asarray(viz.overlay(form, m)), ref)
        torch.testing.assert_close(viz.to_tensor(form), torch.from_numpy(u8).permute(2, 0, 1).float() / 255)
    assert viz.image_size(Image.fromarray(u8)) == viz.image_size(torch.from_numpy(u8).permute(2, 0, 1)) == (26, 40)
    # the case: a PIL photo is no longer clipped to a white overlay
    photo = viz.to_pil(Image.fromarray(u8))
    assert abs(np.asarray(photo).mean() - u8.mean()) < 1


def test_floats_outside_unit_range_and_batched_maps_are_clear_errors():
    with pytest.raises(camkit.InputError, match=r"x / 255"):
        viz.overlay(torch.from_numpy(_photo()).float(), torch.rand(4, 4))
    with pytest.raises(camkit.InputError, match="normalised"):
        viz.to_pil(torch.randn(3, 8, 8) * 2)
    with pytest.raises(camkit.InputError, match=r"viz.show"):
        viz.overlay(_photo(), torch.rand(2, 3, 4, 4))
    with pytest.raises(camkit.InputError, match=r"\[0, 1\]"):
        viz.overlay(_photo(), torch.rand(4, 4) * 5)
    with pytest.raises(camkit.InputError, match="uint8"):
        viz.to_pil(np.zeros((4, 4, 3), dtype=np.int64))


def test_stretch_to_original_is_a_bilinear_resize():
    m = torch.rand(2, 3, 8, 8)
    want = F.interpolate(m, size=(13, 21), mode="bilinear", align_corners=False)
    torch.testing.assert_close(viz.to_original(m, (13, 21)), want)
    torch.testing.assert_close(viz.to_original(m, Image.new("RGB", (21, 13))), want)


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
def test_maps_come_back_through_the_same_geometry(mode):
    """A map that is the preprocessed image itself comes back as the original image (where it was seen)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 30), torch.linspace(0, 1, 50), indexing="ij")
    image = torch.stack([yy, xx, yy * xx])  # smooth, so resampling errors stay small
    x, frame = fit(image, (16, 16), mode, fill=10.0)
    back = frame.to_original(x)  # (3, 30, 50)
    assert back.shape == image.shape
    inner = (slice(None), slice(3, -3), slice(3, -3))  # down- then up-sampling blurs the border pixels
    if mode == "letterbox":
        assert frame.resized == (10, 16) and frame.offset == (3, 0)
        torch.testing.assert_close(back[inner], image[inner], atol=0.02, rtol=0)
        torch.testing.assert_close(back, image, atol=0.08, rtol=0)  # the padding (10.0) is never sampled
    else:
        assert frame.resized == (16, 27) and frame.offset == (0, -6)
        seen = (slice(None), slice(3, -3), slice(14, 38))  # columns the centre crop kept (11.1 .. 40.7)
        torch.testing.assert_close(back[seen], image[seen], atol=0.02, rtol=0)
        assert back[..., :8].abs().max() == 0 and back[..., -8:].abs().max() == 0  # cut off: fill
    box = torch.tensor([[10.0, 6.0, 20.0, 12.0]])
    corners = frame.boxes(box)[0]
    sy, sx = frame.scale
    assert corners.tolist() == pytest.approx([10 * sx + frame.offset[1], 6 * sy + frame.offset[0],
                                              20 * sx + frame.offset[1], 12 * sy + frame.offset[0]])


def test_show_draws_a_labelled_grid_of_a_topk_batch_and_methods():
    model = GapNet()
    x = torch.rand(2, 3, 16, 16)
    e = camkit.GradCAM(model, layer="feat").explain(x, targets=camkit.TopK(3))
    pic = viz.show(e, x, labels=[f"c{i}" for i in range(5)], boxes=[[[2, 2, 9, 9]], []], cell=64)
    line = 64 // 16 + 6 if 64 // 16 >= 10 else 16
    assert pic.size == (4 * 64 + 5 * 4, 2 * (64 + line) + 3 * 4)  # image + 3 classes per row
    assert hasattr(pic, "_repr_png_")  # Jupyter shows it inline
    both = viz.show({"gradcam": e, "layercam": camkit.LayerCAM(model, layer="feat").explain(x, camkit.TopK(3))},
                    [Image.fromarray(_photo(40, 60)), _photo(40, 60)], cell=48)
    assert both.size[0] == 7 * 48 + 8 * 4
    with pytest.raises(camkit.InputError, match="2 images but 3"):
        viz.show(e, torch.rand(3, 3, 16, 16))


def test_cli_writes_overlays_and_maps_at_the_original_size(tmp_path):
    from camkit.cli import main

    path = tmp_path / "wide.png"
    viz.to_pil(torch.rand(3, 30, 50)).save(path)
    n = torch.get_num_threads()
    try:
        for size, fit_mode, shape in (("original", "stretch", (30, 50)), ("model", "letterbox", (64, 64)),
                                      ("25", "crop", (15, 25))):
            out = tmp_path / size
            assert main(["explain", str(path), "--model", "digits_resnet", "--method", "gradcam", "--size", size,
                         "--fit", fit_mode, "--threads", "1", "-o", str(out)]) == 0
            assert np.load(out / "wide_gradcam.npy").shape == shape
            assert Image.open(out / "wide_gradcam.png").size == shape[::-1]
    finally:
        torch.set_num_threads(n)
