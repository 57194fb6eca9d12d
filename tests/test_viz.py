"""camkit.viz: overlays, heatmaps, attributions, grids, encoding."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from camkit import InputError, viz


def test_overlay_blends_resized_map_over_image():
    image = torch.zeros(3, 20, 30)
    m = torch.zeros(5, 6)
    m[0, 0] = 1.0
    out = viz.overlay(image, m, alpha=1.0)
    assert out.size == (30, 20) and out.mode == "RGB"
    a = np.asarray(out)
    assert (a[0, 0] != a[-1, -1]).any()  # hot corner vs cold corner
    same = viz.overlay(image, m, alpha=0.0)
    assert np.asarray(same).max() == 0  # alpha 0 = the image


def test_inputs_in_any_layout():
    hwc = np.random.rand(8, 9, 3).astype(np.float32)
    assert viz.to_pil(hwc).size == (9, 8)
    assert viz.to_pil(torch.from_numpy(hwc).permute(2, 0, 1)).size == (9, 8)
    assert viz.to_pil(np.random.rand(8, 9)).size == (9, 8)
    with pytest.raises(InputError):
        viz.to_pil(np.zeros((2, 2, 2, 2)))
    with pytest.raises(InputError):
        viz.overlay(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(InputError):
        viz.overlay(torch.zeros(3, 4, 4), torch.zeros(4, 4), alpha=2)


def test_heatmap_attribution_boxes_grid_encode():
    assert viz.heatmap(torch.rand(4, 4), size=(16, 8)).size == (8, 16)
    attr = torch.zeros(3, 6, 6)
    attr[0, 0, 0] = 5.0
    pic = np.asarray(viz.attribution(attr))
    assert tuple(pic[3, 3]) == (128, 128, 128)  # zero attribution is mid grey
    boxed = viz.draw_boxes(Image.new("RGB", (10, 10)), [[2, 2, 6, 6]])
    assert boxed.getpixel((2, 2)) != (0, 0, 0) and boxed.getpixel((8, 8)) == (0, 0, 0)
    g = viz.grid([Image.new("RGB", (10, 5)), Image.new("RGB", (4, 8))] * 2, cols=3, pad=1)
    assert g.size == (3 * 10 + 4, 2 * 8 + 3)
    data = viz.encode(Image.new("RGB", (300, 100)), "JPEG", max_side=60)
    assert Image.open(io.BytesIO(data)).size == (60, 20)
    with pytest.raises(InputError):
        viz.grid([], cols=2)
