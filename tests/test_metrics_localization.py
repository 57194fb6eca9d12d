"""Localisation metrics: answers known by construction."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from camkit.errors import InputError
from camkit.metrics import (
    DEFAULT_THRESHOLDS,
    BoxClippedWarning,
    LocalizationProtocol,
    box_from_map,
    box_iou,
    energy_pointing_game,
    localization_iou,
    max_box_acc,
    max_box_acc_from_ious,
    pointing_game,
    threshold_ious,
)


def blob(h: int, w: int, box: tuple[int, int, int, int], value: float = 1.0) -> torch.Tensor:
    m = torch.zeros(h, w)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return m


# ------------------------------------------------------------------ box_iou


def test_iou_identical_disjoint_touching_and_known_overlap():
    a = torch.tensor([[0, 0, 10, 10]])
    assert box_iou(a, a).item() == 1.0
    assert box_iou(a, torch.tensor([[20, 20, 30, 30]])).item() == 0.0
    assert box_iou(a, torch.tensor([[10, 0, 20, 10]])).item() == 0.0  # x1 exclusive: touching, no overlap
    # (0,0,10,10) vs (5,5,15,15): intersection 5*5 = 25, union 100 + 100 - 25 = 175
    assert box_iou(a, torch.tensor([[5, 5, 15, 15]])).item() == pytest.approx(25 / 175)
    # nested: (2,2,4,4) inside (0,0,4,4): 4 / 16
    assert box_iou(torch.tensor([[0, 0, 4, 4]]), torch.tensor([[2, 2, 4, 4]])).item() == pytest.approx(0.25)


def test_iou_is_pairwise_and_empty_box_scores_zero():
    a = torch.tensor([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 5, 10], [0, 0, 0, 0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert torch.allclose(iou[0], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.equal(iou[1], torch.zeros(3))


box_st = st.tuples(
    st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)
).map(lambda t: (min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3])))


@settings(max_examples=200, deadline=None)
@given(box_st, box_st)
def test_iou_symmetric_and_bounded(a, b):
    ta, tb = torch.tensor([a]), torch.tensor([b])
    ab, ba = box_iou(ta, tb).item(), box_iou(tb, ta).item()
    assert ab == pytest.approx(ba)
    assert 0.0 <= ab <= 1.0
    area = (a[2] - a[0]) * (a[3] - a[1])
    assert box_iou(ta, ta).item() == (1.0 if area > 0 else 0.0)


# ------------------------------------------------------------------ box_from_map


def test_blob_gives_its_exact_box():
    m = blob(40, 50, (7, 11, 23, 19))
    assert box_from_map(m).tolist() == [7, 11, 23, 19]


def test_largest_component_wins_and_threshold_is_relative_to_max():
    m = blob(40, 40, (0, 0, 20, 20), 0.5)  # large, weaker
    m[30:33, 30:33] = 1.0  # small, strongest
    assert box_from_map(m, 0.15).tolist() == [0, 0, 20, 20]  # 0.5 >= 0.15 · 1: largest is the big one
    assert box_from_map(m, 0.6).tolist() == [30, 30, 33, 33]  # 0.5 < 0.6 · 1: only the small one
    assert box_from_map(m * 7, 0.6).tolist() == [30, 30, 33, 33]  # scale-free


def test_connectivity_8_joins_diagonals_4_does_not():
    m = torch.zeros(10, 10)
    m[2, 2] = m[3, 3] = m[4, 4] = 1.0
    m[8, 0] = m[8, 1] = 1.0  # 2 pixels, 4-connected
    assert box_from_map(m).tolist() == [2, 2, 5, 5]  # default 8: diagonal line of 3
    assert box_from_map(m, connectivity=4).tolist() == [0, 8, 2, 9]
    with pytest.raises(InputError):
        box_from_map(m, connectivity=6)


def test_zero_map_gives_empty_box_and_uniform_map_the_full_image():
    assert box_from_map(torch.zeros(8, 9)).tolist() == [0, 0, 0, 0]
    assert box_from_map(torch.full((8, 9), 0.3)).tolist() == [0, 0, 9, 8]
    assert localization_iou(torch.zeros(8, 9), [[0, 0, 4, 4]]).item() == 0.0


def test_box_from_map_batched_matches_single():
    maps = torch.stack([blob(16, 16, (1, 2, 5, 9)), blob(16, 16, (10, 0, 16, 3))])
    boxes = box_from_map(maps)
    assert boxes.shape == (2, 4)
    assert boxes.tolist() == [[1, 2, 5, 9], [10, 0, 16, 3]]


# ------------------------------------------------------------------ localization_iou / MaxBoxAcc


def test_localization_iou_best_match_and_batch():
    m = blob(32, 32, (4, 4, 12, 12))
    gts = [[20, 20, 30, 30], [4, 4, 12, 12]]
    assert localization_iou(m, gts).item() == 1.0
    # box (4,4,12,12) vs gt (8,4,16,12): inter 4*8 = 32, union 64 + 64 - 32 = 96
    maps = torch.stack([m, m])
    out = localization_iou(maps, [torch.tensor(gts), torch.tensor([[8, 4, 16, 12]])])
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([1.0, 32 / 96])


def _two_level_map() -> torch.Tensor:
    m = torch.full((32, 32), 0.25)  # whole image at low thresholds: IoU 64/1024 with the gt
    m[8:16, 8:16] = 1.0  # exactly the gt box above 0.25
    return m


def test_max_box_acc_curve_best_threshold_and_v2():
    good = _two_level_map()
    bad = blob(32, 32, (24, 24, 32, 32))  # never overlaps the gt
    gt = [[[8, 8, 16, 16]], [[8, 8, 16, 16]]]
    res = max_box_acc(torch.stack([good, bad]), gt)
    thr = torch.tensor(DEFAULT_THRESHOLDS, dtype=torch.float64)
    expected = torch.where(thr > 0.25, 0.5, 0.0).double()
    assert torch.allclose(res.curve[0].double(), expected)
    assert res.value == pytest.approx(0.5)
    assert res.best_threshold == (pytest.approx(0.26),)
    v2 = max_box_acc(torch.stack([good, bad]), gt, iou=(0.3, 0.5, 0.7))
    assert v2.value == pytest.approx(0.5) and v2.curve.shape == (3, 100)
    assert "Choe" in res.protocol.describe()


def test_max_box_acc_accumulates_over_batches():
    g = torch.Generator().manual_seed(0)
    maps = torch.nn.functional.avg_pool2d(torch.rand(6, 1, 40, 40, generator=g), 9, 1).squeeze(1)
    gts = [[[i, i, i + 12, i + 15]] for i in range(6)]
    whole = max_box_acc(maps, gts)
    parts = torch.cat([threshold_ious(maps[:2], gts[:2]), threshold_ious(maps[2:], gts[2:])])
    assert max_box_acc_from_ious(parts).value == whole.value
    assert torch.equal(max_box_acc_from_ious(parts).curve, whole.curve)


# ------------------------------------------------------------------ pointing games


def test_pointing_game_hit_miss_tolerance_and_ties():
    m = torch.zeros(20, 20)
    m[5, 5] = 1.0
    assert pointing_game(m, [[4, 4, 8, 8]]).item() == 1.0
    assert pointing_game(m, [[10, 10, 15, 15]]).item() == 0.0
    # box starts at x = 8: pixel centre 5.5 is 2.5 px from the edge x0 = 8
    assert pointing_game(m, [[8, 0, 12, 20]], tolerance=2).item() == 0.0
    assert pointing_game(m, [[8, 0, 12, 20]], tolerance=2.5).item() == 1.0
    m[15, 15] = 1.0  # a tie: one maximum in, one out
    assert pointing_game(m, [[4, 4, 8, 8]]).item() == 0.5
    # uniform map: every pixel ties -> the box's share of the image
    assert pointing_game(torch.ones(10, 10), [[0, 0, 5, 4]]).item() == pytest.approx(0.2)


def test_energy_pointing_game_values():
    inside = blob(16, 16, (2, 2, 6, 6), 0.7)
    assert energy_pointing_game(inside, [[2, 2, 6, 6]]).item() == pytest.approx(1.0)
    assert energy_pointing_game(inside, [[8, 8, 16, 16]]).item() == 0.0
    assert energy_pointing_game(torch.ones(10, 10), [[0, 0, 5, 4]]).item() == pytest.approx(0.2)
    # overlapping boxes count their union once: union of (0,0,5,4) and (0,0,5,8) = 40 px of 100
    assert energy_pointing_game(torch.ones(10, 10), [[0, 0, 5, 4], [0, 0, 5, 8]]).item() == pytest.approx(0.4)
    assert energy_pointing_game(torch.zeros(5, 5), [[0, 0, 2, 2]]).item() == 0.0
    batch = energy_pointing_game(torch.stack([inside, torch.ones(16, 16)]), [[[2, 2, 6, 6]], [[0, 0, 8, 16]]])
    assert batch.tolist() == pytest.approx([1.0, 0.5])
    with pytest.raises(InputError, match="non-negative"):
        energy_pointing_game(inside - 0.5, [[2, 2, 6, 6]])


# ------------------------------------------------------------------ bad input


def test_boxes_outside_the_image_are_clipped_with_a_warning():
    m = blob(20, 20, (10, 10, 20, 20))
    with pytest.warns(BoxClippedWarning, match="clipped"):
        assert localization_iou(m, [[10, 10, 35, 40]]).item() == 1.0
    with pytest.raises(InputError, match="no ground-truth box"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            localization_iou(m, [[30, 30, 40, 40]])


@pytest.mark.parametrize(
    "fn", [localization_iou, pointing_game, energy_pointing_game, lambda m, b: max_box_acc(m, b)]
)
def test_bad_inputs_raise_input_error(fn):
    m = torch.rand(2, 8, 8)
    with pytest.raises(InputError, match="no ground-truth box"):
        fn(m, [torch.zeros(0, 4), [[0, 0, 2, 2]]])
    with pytest.raises(InputError, match="2 maps"):
        fn(m, [[[0, 0, 2, 2]]])
    with pytest.raises(InputError, match="one box set per image"):
        fn(m, torch.tensor([[0, 0, 2, 2], [0, 0, 3, 3]]))
    with pytest.raises(InputError, match="x1 < x0"):
        fn(m, [[[4, 0, 2, 2]], [[0, 0, 2, 2]]])
    nan = m.clone()
    nan[1, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fn(nan, [[[0, 0, 2, 2]], [[0, 0, 2, 2]]])
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\)"):
        fn(torch.rand(1, 2, 8, 8), [[[0, 0, 2, 2]]])


def test_protocol_defaults_match_function_defaults():
    p = LocalizationProtocol()
    assert inspect.signature(box_from_map).parameters["threshold"].default == p.threshold
    assert inspect.signature(localization_iou).parameters["threshold"].default == p.threshold
    assert inspect.signature(box_from_map).parameters["connectivity"].default == p.connectivity
    assert inspect.signature(pointing_game).parameters["tolerance"].default == p.pointing_tolerance_px
    assert (inspect.signature(max_box_acc).parameters["iou"].default,) == p.maxboxacc_iou
    d = p.as_dict()
    assert d["threshold"] == 0.15 and d["metric"] == "Localization"
    assert "threshold=0.15" in p.describe()


def test_pointing_game_ties_are_not_decided_by_float_noise():
    m = torch.zeros(8, 8)
    m[2, 2] = 1.0
    m[5, 5] = 1.0 - 1e-8  # equal up to rounding: a tie
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    assert float(pointing_game(m, box)) == pytest.approx(0.5)
    m[5, 5] = 0.9  # clearly lower: no tie
    assert float(pointing_game(m, box)) == 1.0
