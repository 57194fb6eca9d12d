"""Localisation and faithfulness metrics on 3-D grids (clips (T, H, W), volumes (D, H, W)): hand values."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from camkit.errors import InputError
from camkit.metrics import (
    box_from_map,
    box_iou,
    deletion_auc,
    energy_pointing_game,
    gaussian_blur,
    insertion_auc,
    localization_iou,
    mask_energy,
    mask_iou,
    mask_pointing_game,
    max_box_acc,
    pointing_game,
    threshold_ious,
    threshold_mask_ious,
)


def cube(shape: tuple[int, int, int], box: tuple[int, ...], value: float = 1.0) -> torch.Tensor:
    """A (D, H, W) grid with ``value`` inside ``box`` = (x0, y0, z0, x1, y1, z1)."""
    m = torch.zeros(shape)
    x0, y0, z0, x1, y1, z1 = box
    m[z0:z1, y0:y1, x0:x1] = value
    return m


def test_box_from_a_3d_map_is_x_y_z_ordered_with_exclusive_ends():
    m = cube((4, 8, 9), (3, 2, 1, 7, 5, 3))
    assert box_from_map(m, spatial_dims=3).tolist() == [3, 2, 1, 7, 5, 3]
    batch = torch.stack([m, cube((4, 8, 9), (0, 0, 0, 9, 8, 4), 0.4)])
    assert box_from_map(batch, spatial_dims=3).tolist() == [[3, 2, 1, 7, 5, 3], [0, 0, 0, 9, 8, 4]]
    assert box_from_map(torch.zeros(2, 3, 4), spatial_dims=3).tolist() == [0] * 6


def test_3d_connectivity_full_joins_corners_6_does_not():
    m = torch.zeros(6, 6, 6)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = 1.0  # a corner-to-corner diagonal of 3 voxels
    m[5, 5, 0] = m[5, 5, 1] = 1.0  # 2 voxels sharing a face
    assert box_from_map(m, spatial_dims=3).tolist() == [0, 0, 0, 3, 3, 3]  # default: 26 neighbours
    assert box_from_map(m, spatial_dims=3, connectivity=6).tolist() == [0, 5, 5, 2, 6, 6]
    assert box_from_map(m, spatial_dims=3, connectivity=18).tolist() == [0, 5, 5, 2, 6, 6]  # no edge shared
    with pytest.raises(InputError, match="6, 18, 26"):
        box_from_map(m, spatial_dims=3, connectivity=8)


def test_3d_box_iou_by_hand():
    a = torch.tensor([[0, 0, 0, 2, 2, 2]])
    assert box_iou(a, torch.tensor([[1, 1, 1, 3, 3, 3]])).item() == pytest.approx(1 / 15)  # 1 / (8 + 8 - 1)
    assert box_iou(a, torch.tensor([[0, 0, 1, 2, 2, 3]])).item() == pytest.approx(4 / 12)  # half overlaps in z
    assert box_iou(a, torch.tensor([[0, 0, 2, 2, 2, 4]])).item() == 0.0  # touching in z
    with pytest.raises(InputError, match="4 and 6"):
        box_iou(torch.tensor([[0, 0, 1, 1]]), a)


def test_3d_localization_iou_and_max_box_acc():
    m = cube((4, 8, 8), (2, 2, 1, 6, 6, 3))
    assert localization_iou(m, [[2, 2, 1, 6, 6, 3]], spatial_dims=3).item() == 1.0
    # map box 4x4x2 = 32 voxels vs gt (2,2,0,6,6,2): overlap 4x4x1 = 16, union 32 + 32 - 16 = 48
    assert localization_iou(m, [[2, 2, 0, 6, 6, 2]], spatial_dims=3).item() == pytest.approx(16 / 48)
    ious = threshold_ious(torch.stack([m, m]), [[[2, 2, 1, 6, 6, 3]], [[0, 0, 0, 8, 8, 4]]], [0.5], spatial_dims=3)
    assert ious[:, 0].tolist() == pytest.approx([1.0, 32 / 256])
    res = max_box_acc(torch.stack([m, m]), [[[2, 2, 1, 6, 6, 3]], [[0, 0, 0, 8, 8, 4]]], spatial_dims=3)
    assert res.value == 0.5 and res.protocol.spatial_dims == 3


def test_a_one_frame_volume_scores_as_its_image():
    """Depth 1 with z box [0, 1): the 3-D metrics equal the 2-D ones on the same grid."""
    torch.manual_seed(0)
    img = torch.rand(3, 10, 12)
    boxes2 = [[[2, 3, 7, 9]], [[0, 0, 5, 5]], [[6, 1, 12, 10]]]
    boxes3 = [[[2, 3, 0, 7, 9, 1]], [[0, 0, 0, 5, 5, 1]], [[6, 1, 0, 12, 10, 1]]]
    vol = img[:, None]
    for thr in (0.3, 0.6):
        assert torch.allclose(localization_iou(img, boxes2, thr), localization_iou(vol, boxes3, thr, spatial_dims=3))
    assert torch.allclose(pointing_game(img, boxes2, 1.5), pointing_game(vol, boxes3, 1.5, spatial_dims=3))
    assert torch.allclose(energy_pointing_game(img, boxes2), energy_pointing_game(vol, boxes3, spatial_dims=3))


def test_3d_pointing_game_and_energy_by_hand():
    m = torch.full((4, 6, 6), 0.1)
    m[3, 5, 5] = 1.0  # the peak, outside the box below
    box = [[0, 0, 0, 3, 3, 2]]  # 3 x 3 x 2 = 18 voxels
    assert pointing_game(m, box, spatial_dims=3).item() == 0.0
    # distance from voxel centre (5.5, 5.5, 3.5) to the box: (2.5, 2.5, 1.5) -> sqrt(14.75) = 3.84
    assert pointing_game(m, box, tolerance=3.8, spatial_dims=3).item() == 0.0
    assert pointing_game(m, box, tolerance=3.9, spatial_dims=3).item() == 1.0
    m[0, 0, 0] = 1.0  # a tie inside: half the maximal voxels hit
    assert pointing_game(m, box, spatial_dims=3).item() == 0.5
    # energy: inside 17 * 0.1 + 1.0 = 2.7; total 2.7 + (144 - 18 - 1) * 0.1 + 1.0 = 16.2
    assert energy_pointing_game(m, box, spatial_dims=3).item() == pytest.approx(2.7 / 16.2)
    mask = cube((4, 6, 6), (0, 0, 0, 3, 3, 2)).bool()
    assert mask_energy(m, mask, spatial_dims=3).item() == pytest.approx(2.7 / 16.2)
    assert mask_pointing_game(m, mask, spatial_dims=3).item() == 0.5


def test_mask_iou_by_hand_in_2d_and_3d():
    m = torch.zeros(4, 6, 6)
    m[1:3, 1:4, 1:4] = 1.0  # 18 voxels at 1.0
    m[1:3, 4, 1:4] = 0.3  # 6 voxels at 0.3
    mask = torch.zeros(4, 6, 6, dtype=torch.bool)
    mask[1:3, 1:5, 1:4] = True  # 24 voxels, all of the above
    assert mask_iou(m, mask, 0.15, spatial_dims=3).item() == 1.0
    assert mask_iou(m, mask, 0.5, spatial_dims=3).item() == pytest.approx(18 / 24)
    table = threshold_mask_ious(torch.stack([m, torch.zeros_like(m)]), mask, [0.2, 0.5], spatial_dims=3)
    assert torch.allclose(table, torch.tensor([[1.0, 0.75], [0.0, 0.0]]))  # a zero map covers nothing
    assert mask_iou(m[1], mask[1], 0.5).item() == pytest.approx(9 / 12)  # the same rule on one slice
    with pytest.raises(InputError, match="does not match"):
        mask_iou(m, mask[:2], spatial_dims=3)


def test_3d_inputs_refused_clearly_without_spatial_dims_and_boxes_need_6_numbers():
    m = torch.rand(2, 4, 8, 8)
    with pytest.raises(InputError, match="spatial_dims=3"):
        localization_iou(m, [[[0, 0, 2, 2]], [[0, 0, 2, 2]]])
    with pytest.raises(InputError, match=r"\(N, 6\) as x0, y0, z0, x1, y1, z1"):
        localization_iou(m, [[[0, 0, 2, 2]], [[0, 0, 2, 2]]], spatial_dims=3)
    with pytest.raises(InputError, match="z1 < z0"):
        pointing_game(m[0], [[0, 0, 3, 2, 2, 1]], spatial_dims=3)
    with pytest.raises(InputError, match="spatial_dims must be 2"):
        box_from_map(m, spatial_dims=4)
    with pytest.warns(UserWarning, match="8x8x4 grid"):
        localization_iou(m[0], [[0, 0, 0, 2, 2, 9]], spatial_dims=3)


class VoxelMean(nn.Module):
    """Two classes: logit_0 = mean of channel 0 over the voxels ``mask``, logit_1 = 0."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0 = (x[:, 0] * self.mask).sum((1, 2, 3)) / self.mask.sum()
        return torch.stack([l0, torch.zeros_like(l0)], 1)


def test_deletion_and_insertion_over_voxels_closed_form():
    # r = 8 of N = 64 voxels hold the score; the map ranks them first. Deleting a fraction f (black):
    # s(f) = max(0, 1 - f N / r); with 16 steps (4 voxels a step) the kink f = 1/8 is on the grid, so
    # the trapezoid is exact: AUC = r / (2N) = 1/16. Insertion from black: 1 - r / (2N) = 15/16.
    region = torch.zeros(4, 4, 4)
    region[1:3, 1:3, 1:3] = 1.0
    model, x = VoxelMean(region), torch.ones(1, 3, 4, 4, 4)
    m = region[None] * 0.5 + 0.5 * torch.rand(1, 4, 4, 4) * (1 - region[None]) * 0.9
    res = deletion_auc(model, x, m, 0, steps=16, score="logit")
    assert res.scores[0].tolist() == pytest.approx([max(0.0, 1 - 4 * i / 8) for i in range(17)], abs=1e-6)
    assert res.auc.item() == pytest.approx(1 / 16, abs=1e-6)
    assert res.protocol.grid == "voxels"
    ins = insertion_auc(model, x, m, 0, steps=16, score="logit", substrate="zeros")
    assert ins.auc.item() == pytest.approx(15 / 16, abs=1e-6)
    # a half-size map (2, 2, 2) is upsampled trilinearly to the clip and ranks the same voxels first
    small = torch.zeros(1, 2, 2, 2)
    small[0, 0, 0, 0] = 1.0
    assert deletion_auc(model, x, small, 0, steps=8, score="logit").scores.shape == (1, 9)


def test_blur_is_separable_over_every_axis():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 5, 6, 7, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(torch.full_like(x, 0.3), 5, 1.0), torch.full_like(x, 0.3))
    # each frame blurred in 2-D, then along the frames: the same as the 3-D blur
    frames = torch.stack([gaussian_blur(x[:, :, t], 5, 1.0) for t in range(5)], 2)
    along_t = gaussian_blur(frames.permute(0, 1, 3, 4, 2).reshape(1, 2 * 6 * 7, 5, 1), 5, 1.0)
    # a (.., L, 1) "image" blurs only along L (replicate padding leaves the width-1 axis as is)
    expected = along_t.reshape(1, 2, 6, 7, 5).permute(0, 1, 4, 2, 3)
    assert torch.allclose(gaussian_blur(x, 5, 1.0), expected)
    # 2-D reference by hand: a 3-tap kernel on a delta
    d = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    d[0, 0, 2, 2] = 1.0
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / 2)
    g = g / g.sum()
    assert torch.allclose(gaussian_blur(d, 3, 1.0)[0, 0, 1:4, 1:4], g[:, None] * g[None, :])


def test_3d_similarity_and_baselines():
    from camkit.metrics import baseline_maps, center_gaussian_map, spearman_correlation, ssim

    torch.manual_seed(1)
    a = torch.rand(2, 5, 6, 7, dtype=torch.float64)
    b = a + 0.3 * torch.rand_like(a)
    rho = spearman_correlation(a, b, spatial_dims=3)
    assert torch.allclose(rho, spearman_correlation(a.flatten(1)[:, None], b.flatten(1)[:, None]))  # ranks ignore shape
    assert torch.allclose(ssim(a, a, spatial_dims=3), torch.ones(2))
    # the separable 3-D window equals one conv3d with the outer-product kernel (valid positions)
    k = 5
    r = torch.arange(k, dtype=torch.float64) - 2
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    g = g / g.sum()
    w = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]
    blur = lambda t: nn.functional.conv3d(t[:, None], w)  # noqa: E731
    mx, my = blur(a), blur(b)
    vx, vy, cxy = blur(a * a) - mx**2, blur(b * b) - my**2, blur(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).flatten(1).mean(1)
    assert torch.allclose(ssim(a, b, window=5, spatial_dims=3).double(), ref, atol=1e-6)
    g3 = center_gaussian_map((4, 6, 8), spatial_dims=3)
    assert g3.shape == (4, 6, 8) and float(g3.max()) == 1.0
    assert torch.equal(g3, g3.flip(0)) and torch.equal(g3, g3.flip(2))  # centred on every axis
    assert torch.allclose(g3[1:3].amax(0), center_gaussian_map((6, 8)))  # the 2-D map in its middle slices
    assert baseline_maps("uniform", (3, 4, 6, 8), spatial_dims=3).shape == (3, 4, 6, 8)
    with pytest.raises(InputError, match=r"\(D, H, W\)"):
        baseline_maps("random", (4, 6), spatial_dims=3)


def test_road_imputation_in_3d_reproduces_a_linear_field_and_generalises_the_2d_stencil():
    from camkit.metrics import noisy_linear_imputation, road
    from camkit.metrics.remove_debias import NEIGHBOURS, stencil

    assert [(o, pytest.approx(w)) for o, w in stencil(2)] == [((dy, dx), w) for dy, dx, w in NEIGHBOURS]
    weights = dict(stencil(3))
    assert len(weights) == 26 and sum(weights.values()) == pytest.approx(1.0)
    assert weights[(0, 0, 1)] == pytest.approx(3 / 44) and weights[(1, 1, 1)] == pytest.approx(1 / 44)
    # a symmetric stencil averages a linear field to itself: removed interior voxels come back exactly
    d, h, w = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), torch.arange(8.0), indexing="ij")
    field = (0.1 * d - 0.05 * h + 0.02 * w + 0.3).double()[None, None].repeat(1, 2, 1, 1, 1)
    removed = torch.zeros(1, 6, 7, 8, dtype=torch.bool)
    removed[0, 1:5, 2:6, 1:7] = True
    holes = field * torch.where(removed[:, None], 0.0, 1.0).double()
    assert torch.allclose(noisy_linear_imputation(holes, removed, noise=0), field, atol=1e-10)  # LU
    import camkit.metrics.remove_debias as rd

    lu_cells, rd._LU_CELLS_3D = rd._LU_CELLS_3D, 0  # conjugate gradients, as on large volumes
    try:
        assert torch.allclose(noisy_linear_imputation(holes, removed, noise=0), field, atol=1e-9)
    finally:
        rd._LU_CELLS_3D = lu_cells
    region = torch.zeros(4, 4, 4)
    region[1:3, 1:3, 1:3] = 1.0
    x = (torch.rand(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + region * 0.5)
    res = road(VoxelMean(region), x, region.expand(2, 4, 4, 4), 0, percentiles=(10, 50), score="logit")
    assert res.morf.shape == (2, 2) and bool((res.combined > 0).all())  # the region's voxels matter most
