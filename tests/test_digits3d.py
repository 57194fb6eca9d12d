"""The generated clip and volume sets: exact ground truth, determinism; the 3-D viz pictures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from camkit import viz
from camkit.data import digit_volumes, moving_digits
from camkit.errors import InputError
from camkit.metrics import energy_pointing_game, mask_energy, pointing_game


def test_moving_digit_boxes_are_tight_per_frame_and_the_path_is_linear():
    ds = moving_digits(6, seed=3, size=32, frames=8)
    for s in ds:
        assert s.image.shape == (3, 8, 32, 32) and s.mask.shape == (8, 32, 32) and s.boxes.shape == (8, 6)
        assert 0 <= s.label < 10 and float(s.image.min()) >= 0 and float(s.image.max()) <= 1
        starts = s.boxes[:, :2]
        for t, (x0, y0, z0, x1, y1, z1) in enumerate(s.boxes.long().tolist()):
            assert (z0, z1) == (t, t + 1)
            ink = s.mask[t]
            rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
            assert (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) == (x0, y0, x1, y1)
        step = (starts[-1] - starts[0]) / 7  # constant velocity: each position within rounding of the line
        line = starts[0] + step * torch.arange(8)[:, None]
        assert (starts - line).abs().max() <= 0.5 + 1e-6
        assert float((starts[-1] - starts[0]).abs().max()) >= 8  # it moves
    a, b = moving_digits(2, seed=3)[1], moving_digits(2, seed=3)[1]
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)


def test_the_tube_of_boxes_is_what_the_3d_metrics_read():
    s = moving_digits(1, seed=5)[0]
    inside = mask_energy(s.mask, s.mask > 0, spatial_dims=3)
    assert float(inside) == pytest.approx(1.0)  # the ink lies in its tube
    assert float(energy_pointing_game(s.mask, s.boxes, spatial_dims=3)) == pytest.approx(1.0)
    assert float(pointing_game(s.mask, s.boxes, spatial_dims=3)) == 1.0


def test_digit_volume_box_is_exact_and_ink_is_extruded():
    for s in digit_volumes(5, seed=2, size=32):
        x0, y0, z0, x1, y1, z1 = s.boxes[0].long().tolist()
        assert s.image.shape == (1, 32, 32, 32) and 6 <= z1 - z0 <= 14
        nz = s.mask.nonzero()
        assert nz.min(0).values.tolist() == [z0, y0, x0] and (nz.max(0).values + 1).tolist() == [z1, y1, x1]
        assert torch.equal(s.mask[z0], s.mask[z1 - 1])  # the same glyph in every slice
        assert float(energy_pointing_game(s.mask, s.boxes, spatial_dims=3)) == pytest.approx(1.0)


def test_frame_strip_animation_and_volume_slices(tmp_path):
    s = moving_digits(1, seed=1, size=32, frames=4)[0]
    m = s.mask / s.mask.max()
    strip = viz.frame_strip(s.image.transpose(0, 1), m, cell=64)
    assert strip.height < strip.width and strip.width >= 4 * 64
    gif = viz.save_clip(tmp_path / "c.gif", s.image.transpose(0, 1), m, fps=2)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 4
    overlays = viz.clip_overlays(s.image.transpose(0, 1), m[:2])  # a 2-frame map is stretched over 4 frames
    assert len(overlays) == 4
    v = digit_volumes(1, seed=1)[0]
    pic = viz.volume_slices(v.image, v.mask, spacing=(3.0, 1.0, 1.0), cell=96)
    assert pic.width > pic.height
    with pytest.raises(InputError, match="same shape"):
        viz.volume_slices(v.image, v.mask[:4])


def test_show_clip_and_volume_read_the_methods_output_kind():
    from types import SimpleNamespace

    clip = torch.rand(1, 3, 4, 16, 16)
    maps = torch.rand(1, 4, 16, 16)
    e = SimpleNamespace(maps=maps, targets=torch.tensor([[3]]), scores=torch.tensor([[1.0]]),
                        logits=torch.zeros(1, 10), output="cam", categories=[str(i) for i in range(10)])
    assert viz.show_clip(e, clip, cell=48).width >= 4 * 48
    signed = SimpleNamespace(**{**vars(e), "maps": torch.randn(1, 3, 4, 16, 16), "output": "attribution"})
    assert viz.show_clip(signed, clip, cell=48).width >= 4 * 48  # per-frame attributions, not a map
    vol = torch.rand(1, 1, 8, 8, 8)
    e3 = SimpleNamespace(**{**vars(e), "maps": torch.rand(1, 8, 8, 8)})
    assert viz.show_volume(e3, vol, cell=48).width >= 3 * 48
    with pytest.raises(InputError, match="no map"):
        viz.show_clip(e, clip, i=1)
    assert np.asarray(viz.show_volume(SimpleNamespace(**{**vars(e3), "maps": torch.randn(1, 1, 8, 8, 8),
                                                         "output": "attribution"}), vol, cell=48)).any()


@pytest.mark.parametrize("name, dataset", [("moving_digits_net", moving_digits), ("digit_volumes_net", digit_volumes)])
def test_bundled_3d_nets_are_well_above_chance_on_held_out_items(name, dataset):
    import camkit

    model = camkit.models.load(name)
    assert model.input_size in ((8, 32, 32), (32, 32, 32)) and model.grid_dims == 3 and model.default_layer == "layer3"
    items = dataset(60, seed=1000, split="test")  # the trainer's held-out seed and split
    x = torch.stack([s.image for s in items])
    y = torch.tensor([s.label for s in items])
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc >= 0.6, acc  # chance 0.10; 500 held-out items: 0.854 (clips), 0.894 (volumes)


def test_the_trainer_runs_and_writes_loadable_weights(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    import camkit

    spec = importlib.util.spec_from_file_location("train3d", Path(__file__).parents[1] / "tools" / "train_digits3d.py")
    train3d = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train3d", train3d)  # its dataclasses look their module up there
    spec.loader.exec_module(train3d)
    train3d.main(["digit_volumes_net", "--epochs", "1", "--n-train", "16", "--n-test", "8", "--out", str(tmp_path)])
    model = camkit.models.load("digit_volumes_net", weights=str(tmp_path / "digit_volumes_net.pt"))
    assert model(torch.rand(2, 1, 32, 32, 32)).shape == (2, 10)
