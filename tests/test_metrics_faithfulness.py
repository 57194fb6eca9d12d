"""Faithfulness metrics on models whose scores are known in closed form."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from camkit.errors import InputError, TargetError
from camkit.metrics import (
    ConfidenceProtocol,
    PerturbationProtocol,
    average_drop,
    average_drop_from_scores,
    confidence_change,
    deletion_auc,
    gaussian_blur,
    increase_in_confidence,
    increase_in_confidence_from_scores,
    insertion_auc,
    uniform_map,
)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


class RegionMean(nn.Module):
    """Two classes: logit_0 = scale · mean of channel 0 over the region ``mask``, logit_1 = 0.

    So softmax p_0 = sigmoid(logit_0): scores are known in closed form."""

    def __init__(self, mask: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.scale = scale
        self.drop = nn.Dropout(0.5)  # must be off during evaluation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0 = (x[:, 0] * self.mask).sum((1, 2)) / self.mask.sum() * self.scale
        l0 = self.drop(l0)
        return torch.stack([l0, torch.zeros_like(l0)], 1)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.3), nn.Linear(4, 5),
    )


# ------------------------------------------------------------------ Average Drop / Increase


def test_ones_map_gives_zero_drop_and_no_increase():
    model = small_cnn()
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    cc = confidence_change(model, x, uniform_map((5, 12, 12)))
    assert torch.equal(cc.y, cc.o)
    assert cc.average_drop == 0.0
    assert cc.increase_in_confidence == 0.0


def test_average_drop_and_increase_hand_computed():
    model = RegionMean(torch.ones(8, 8), scale=4.0)
    x = torch.ones(2, 1, 8, 8)
    maps = torch.full((2, 8, 8), 0.5)
    # image 0, class 0: Y = σ(4), O = σ(2) -> drop (σ(4) − σ(2)) / σ(4); O < Y
    # image 1, class 1: Y = 1 − σ(4) = σ(−4), O = σ(−2) > Y -> drop 0, an increase
    drop0 = (sigmoid(4) - sigmoid(2)) / sigmoid(4)
    cc = confidence_change(model, x, maps, [0, 1])
    assert cc.y.tolist() == pytest.approx([sigmoid(4), sigmoid(-4)], rel=1e-5)
    assert cc.o.tolist() == pytest.approx([sigmoid(2), sigmoid(-2)], rel=1e-5)
    assert cc.average_drop == pytest.approx(100 * drop0 / 2, rel=1e-5)
    assert cc.increase_in_confidence == 50.0
    assert average_drop(model, x, maps, [0, 1]) == pytest.approx(100 * drop0 / 2, rel=1e-5)
    assert increase_in_confidence(model, x, maps, [0, 1]) == 50.0
    # targets=None explains the top-1 class: class 0 for both images
    assert confidence_change(model, x, maps).targets.tolist() == [0, 0]


def test_pixel_space_multiplies_before_normalisation_tensor_space_after():
    model = RegionMean(torch.ones(8, 8), scale=4.0)
    normalize = lambda t: (t - 0.5) / 0.5  # noqa: E731
    x = torch.ones(1, 1, 8, 8)
    m = torch.full((1, 8, 8), 0.5)
    pixel = confidence_change(model, x, m, 0, space="pixel", normalize=normalize)
    tensor = confidence_change(model, x, m, 0, space="tensor", normalize=normalize)
    assert pixel.y.item() == tensor.y.item() == pytest.approx(sigmoid(4))  # normalize(1) = 1
    assert pixel.o.item() == pytest.approx(sigmoid(0))  # normalize(1 · 0.5) = 0
    assert tensor.o.item() == pytest.approx(sigmoid(2))  # normalize(1) · 0.5 = 0.5
    assert pixel.protocol.space == "pixel" and tensor.protocol.normalize == "<lambda>"


def test_logit_scores_with_non_positive_y_are_left_out_loudly():
    y = torch.tensor([2.0, -1.0, 4.0])
    o = torch.tensor([1.0, -3.0, 5.0])
    with pytest.warns(RuntimeWarning, match="1 of 3"):
        assert average_drop_from_scores(y, o) == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert increase_in_confidence_from_scores(y, o) == pytest.approx(100 / 3)
    with pytest.raises(InputError, match="undefined"):
        average_drop_from_scores(-y.abs(), o)
    model = RegionMean(torch.ones(4, 4))
    cc = confidence_change(model, torch.ones(1, 1, 4, 4), torch.full((1, 4, 4), 0.5), 0, score="logit")
    assert cc.y.item() == pytest.approx(1.0) and cc.o.item() == pytest.approx(0.5)


def test_small_maps_are_upsampled_and_bad_maps_rejected():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    assert confidence_change(model, x, torch.ones(2, 4, 4)).average_drop == 0.0
    with pytest.raises(InputError, match="aspect ratio"):
        confidence_change(model, x, torch.ones(2, 4, 8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        confidence_change(model, x, torch.full((2, 16, 16), 2.0))
    nan = torch.ones(2, 16, 16)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        confidence_change(model, x, nan)
    with pytest.raises(InputError, match="3 maps for 2 images"):
        confidence_change(model, x, torch.ones(3, 16, 16))
    with pytest.raises(TargetError, match="3 targets for 2 images"):
        confidence_change(model, x, torch.ones(2, 16, 16), [0, 1, 2])
    with pytest.raises(InputError, match="space"):
        confidence_change(model, x, torch.ones(2, 16, 16), space="normalised")  # type: ignore[arg-type]


def test_model_flags_and_gradients_are_left_alone():
    model = small_cnn()
    model.train()
    model[1].eval()  # a user-chosen mixed state
    before = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    x = torch.rand(3, 3, 8, 8)
    confidence_change(model, x, torch.rand(3, 8, 8))
    deletion_auc(model, x, torch.rand(3, 8, 8), steps=4)
    assert [m.training for m in model.modules()] == before
    assert torch.equal(model[1].running_mean, stats)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ Deletion / Insertion


def _region_setup():
    """8×8 one-channel image of ones (N = 64 pixels); region R = rows 0-1 (r = 16 pixels).

    The map ranks every pixel of R above every other pixel (distinct values, so no ties).
    """
    mask = torch.zeros(8, 8)
    mask[:2] = 1
    idx = torch.arange(64, dtype=torch.float32).view(8, 8)
    m = torch.where(mask.bool(), 2 - idx * 0.01, 1 - idx * 0.001)
    m = (m - m.min()) / (m.max() - m.min())
    return RegionMean(mask), torch.ones(1, 1, 8, 8), m.unsqueeze(0)


def test_deletion_auc_closed_form():
    # With score = logit_0 = mean over R and black substrate, after deleting a fraction f of the
    # pixels (R first): s(f) = max(0, 1 − f·N/r). ∫₀¹ s = r / (2N) = 16/128 = 0.125. steps = 16 puts a
    # grid point on the kink f = r/N = 0.25 (k_i = 4i), so the trapezoid rule is exact.
    model, x, m = _region_setup()
    res = deletion_auc(model, x, m, 0, steps=16, score="logit")
    assert res.fractions.tolist() == pytest.approx([i / 16 for i in range(17)])
    expected = [max(0.0, 1 - 4 * i / 16) for i in range(17)]
    assert res.scores[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert res.auc.item() == pytest.approx(0.125, abs=1e-6)
    # Insertion from a black substrate is the mirror image: s(f) = min(1, f·N/r), AUC = 1 − r/(2N).
    ins = insertion_auc(model, x, m, 0, steps=16, score="logit", substrate="zeros")
    assert ins.auc.item() == pytest.approx(0.875, abs=1e-6)


def test_x_axis_is_the_actual_fraction_of_pixels_changed():
    model, x, m = _region_setup()
    res = deletion_auc(model, x, m, 0, steps=10, score="logit")
    counts = [0, 6, 13, 19, 26, 32, 38, 45, 51, 58, 64]  # round(i · 64 / 10)
    assert (res.fractions * 64).round().tolist() == counts
    assert res.scores[0].tolist() == pytest.approx([max(0.0, 1 - k / 16) for k in counts], abs=1e-6)
    assert res.auc.item() == pytest.approx(torch.trapezoid(res.scores[0], res.fractions).item())


def test_substrates_and_tensor_space():
    mask = torch.ones(6, 6)
    model = RegionMean(mask)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 6, 6, generator=g)
    m = torch.rand(2, 6, 6, generator=g)
    ins = insertion_auc(model, x, m, 0, steps=6, substrate="mean", score="logit")
    assert ins.scores[:, 0].tolist() == pytest.approx(x.mean((1, 2, 3)).tolist(), abs=1e-6)  # mean image
    assert ins.scores[:, -1].tolist() == pytest.approx(x.mean((1, 2, 3)).tolist(), abs=1e-6)  # full image
    blur = insertion_auc(model, x, m, 0, steps=6, score="logit")  # default: RISE blur substrate
    assert blur.protocol.substrate == "blur"
    assert torch.allclose(gaussian_blur(torch.ones(1, 3, 9, 9)), torch.ones(1, 3, 9, 9))
    normalize = lambda t: (t - 0.5) / 0.5  # noqa: E731
    ones = torch.ones(1, 1, 6, 6)
    pix = deletion_auc(model, ones, m[:1], 0, steps=3, score="logit", normalize=normalize)
    ten = deletion_auc(model, ones, m[:1], 0, steps=3, score="logit", normalize=normalize, space="tensor")
    assert pix.scores[0, -1].item() == pytest.approx(-1.0)  # black pixels, then normalised
    assert ten.scores[0, -1].item() == pytest.approx(0.0)  # zeros in the normalised tensor


def test_batching_does_not_change_results_and_ties_are_seeded():
    model = small_cnn()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 10, 10, generator=g)
    m = torch.rand(3, 10, 10, generator=g)
    a = deletion_auc(model, x, m, steps=7, batch_size=1)
    b = deletion_auc(model, x, m, steps=7, batch_size=1000)
    assert torch.allclose(a.scores, b.scores, atol=1e-6)
    assert a.scores.shape == (3, 8) and a.auc.shape == (3,)
    u = torch.ones(3, 10, 10)
    assert torch.equal(deletion_auc(model, x, u, steps=5, seed=1).scores, deletion_auc(model, x, u, steps=5, seed=1).scores)
    assert 0.0 <= a.mean_auc <= 1.0
    with pytest.raises(InputError, match="substrate"):
        deletion_auc(model, x, m, substrate="noise")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="steps"):
        deletion_auc(model, x, m, steps=0)


def test_protocol_defaults_match_function_defaults():
    cp, pp = ConfidenceProtocol(), PerturbationProtocol()
    sig = inspect.signature(confidence_change).parameters
    assert (sig["space"].default, sig["score"].default) == (cp.space, cp.score)
    d = inspect.signature(deletion_auc).parameters
    assert (d["steps"].default, d["substrate"].default, d["score"].default) == (pp.steps, pp.substrate, pp.score)
    assert (d["blur_kernel"].default, d["blur_sigma"].default) == (pp.blur_kernel, pp.blur_sigma)
    assert inspect.signature(insertion_auc).parameters["substrate"].default == "blur"
    assert "Grad-CAM++" in cp.describe() and "RISE" in pp.describe()


def test_end_to_end_with_the_method_api():
    import camkit

    if not hasattr(camkit, "create"):
        pytest.skip("method API not available")
    from camkit.metrics import localization_iou, pointing_game

    model = small_cnn()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = camkit.create("gradcam", model, layer="0")(x)
    assert maps.shape == (3, 16, 16)
    cc = confidence_change(model, x, maps)
    assert 0.0 <= cc.average_drop <= 100.0 and 0.0 <= cc.increase_in_confidence <= 100.0
    cur = deletion_auc(model, x, maps, steps=8)
    assert cur.scores.shape == (3, 9) and bool(torch.isfinite(cur.auc).all())
    boxes = [[[0, 0, 8, 8]]] * 3
    assert localization_iou(maps, boxes).shape == (3,) and pointing_game(maps, boxes).shape == (3,)
