"""Gradient CAM methods against values derived by hand (float64), not only shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit
from camkit.core import engine
from camkit.core.postprocess import normalize, upsample
from toy_models import GapNet, acts_and_grads as _acts_and_grads

torch.manual_seed(0)


def _x(b: int = 2, s: int = 8, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _final(raw: torch.Tensor, size) -> torch.Tensor:
    return normalize(upsample(torch.relu(raw).float(), size))


def test_gap_linear_head_cam_gradcam_xgradcam_agree_and_weights_are_fc_weights():
    model = GapNet().double()
    x = _x()
    e_cam = camkit.CAM(model, layer="feat").explain(x, targets=[1, 3])
    e_grad = camkit.GradCAM(model, layer="feat").explain(x, targets=[1, 3])
    e_x = camkit.XGradCAM(model, layer="feat").explain(x, targets=[1, 3])
    h, w = e_grad.raw.shape[-2:]
    fc_w = model.fc.weight.detach().float()[torch.tensor([1, 3])]
    torch.testing.assert_close(e_cam.weights, fc_w)
    torch.testing.assert_close(e_grad.weights, fc_w / (h * w), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e_cam.maps, e_grad.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(e_x.maps, e_grad.maps, atol=1e-5, rtol=0)
    # the map is relu(sum_c W_c A_c), computed here independently
    a, _ = _acts_and_grads(model, x, torch.tensor([1, 3]))
    ref = torch.einsum("bc,bchw->bhw", model.fc.weight.detach()[[1, 3]], a)
    torch.testing.assert_close(e_cam.maps, _final(ref, x.shape[-2:]), atol=1e-5, rtol=0)


def test_cam_refuses_a_head_that_is_not_gap_linear():
    model = GapNet(deep_tail=True).double()
    with pytest.raises(camkit.UnsupportedModelError, match="global average pooling"):
        camkit.CAM(model, layer="feat")(_x())


def test_gradients_match_float64_finite_differences():
    model = GapNet(deep_tail=True).double()
    x = _x(b=1)
    p = engine.forward(model, x, [model.feat], ["feat"], record=True)
    (g,) = engine.gradients(p, p.logits[:, [2]])
    a = model.feat(model.stem(x)).detach()
    eps = 1e-6
    fd = torch.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        ap, am = a.clone(), a.clone()
        ap[idx] += eps
        am[idx] -= eps
        fd[idx] = (model.tail(ap)[0, 2] - model.tail(am)[0, 2]) / (2 * eps)
    torch.testing.assert_close(g[0], fd, rtol=1e-5, atol=1e-7)


def test_gradcampp_matches_hand_computation_of_the_survey_formula():
    model = GapNet(deep_tail=True).double()
    x = _x()
    cls = torch.tensor([0, 4])
    e = camkit.GradCAMPlusPlus(model, layer="feat").explain(x, targets=cls.tolist())
    a, g = _acts_and_grads(model, x, cls)
    a, g = a.numpy(), g.numpy()
    w_ref = np.zeros(a.shape[:2])
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            s = a[b, k].sum()
            for i, j in np.ndindex(*a.shape[2:]):
                d = g[b, k, i, j]
                den = 2 * d**2 + s * d**3
                alpha = d**2 / den if den != 0 else 0.0
                w_ref[b, k] += alpha * max(d, 0.0)
    torch.testing.assert_close(e.weights.double(), torch.from_numpy(w_ref), rtol=1e-5, atol=1e-8)
    ref = torch.einsum("bc,bchw->bhw", torch.from_numpy(w_ref), torch.from_numpy(a))
    torch.testing.assert_close(e.maps, _final(ref, x.shape[-2:]), atol=1e-5, rtol=0)


def test_gradcampp_alpha_is_zero_where_denominator_is_zero():
    model = GapNet(deep_tail=True).double()
    with torch.no_grad():
        model.fc.weight[2].zero_()  # class 2 score has zero gradient everywhere
    e = camkit.GradCAMPlusPlus(model, layer="feat").explain(_x(), targets=2)
    assert torch.isfinite(e.weights).all() and (e.weights == 0).all()
    assert (e.maps == 0).all()  # constant map -> zeros, never NaN


def test_layercam_and_hirescam_match_their_formulas():
    model = GapNet(deep_tail=True).double()
    x = _x()
    cls = torch.tensor([1, 2])
    a, g = _acts_and_grads(model, x, cls)
    e_l = camkit.LayerCAM(model, layer="feat").explain(x, targets=cls.tolist())
    e_h = camkit.HiResCAM(model, layer="feat").explain(x, targets=cls.tolist())
    torch.testing.assert_close(e_l.raw.double(), torch.relu((torch.relu(g) * a).sum(1)), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e_h.raw.double(), torch.relu((g * a).sum(1)), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e_l.maps, _final((torch.relu(g) * a).sum(1), x.shape[-2:]), atol=1e-5, rtol=0)


def test_gradcam_weights_are_spatial_mean_of_gradients_deep_tail():
    model = GapNet(deep_tail=True).double()
    x = _x()
    a, g = _acts_and_grads(model, x, torch.tensor([3, 3]))
    e = camkit.GradCAM(model, layer="feat").explain(x, targets=3)
    torch.testing.assert_close(e.weights.double(), g.mean((2, 3)), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(e.maps, _final(torch.einsum("bc,bchw->bhw", g.mean((2, 3)), a), x.shape[-2:]), atol=1e-5, rtol=0)


def test_xgradcam_matches_formula_and_guards_zero_activation_sums():
    model = GapNet(deep_tail=True).double()
    x = _x()
    a, g = _acts_and_grads(model, x, torch.tensor([0, 0]))
    e = camkit.XGradCAM(model, layer="feat").explain(x, targets=0)
    s = a.sum((2, 3), keepdim=True)
    ref = torch.where(s.squeeze(-1).squeeze(-1) > 0, (a / s.clamp_min(1e-300) * g).sum((2, 3)), torch.zeros(()).double())
    torch.testing.assert_close(e.weights.double(), ref, rtol=1e-5, atol=1e-8)
    # signed activations summing to exactly zero: weight 0, no inf/NaN
    from camkit.methods.gradient import XGradCAM
    a2 = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]])
    w = XGradCAM.channel_weights(None, a2, torch.ones(1, 1, 1, 2, 2))  # type: ignore[arg-type]
    assert w.item() == 0.0


def test_smooth_gradcampp_reduces_to_gradcampp_without_noise_and_in_chunks():
    model = GapNet(deep_tail=True).double()
    x = _x()
    ref = camkit.GradCAMPlusPlus(model, layer="feat").explain(x, targets=[1, 2])
    for n, bs in [(1, 32), (5, 2), (5, 64)]:
        e = camkit.SmoothGradCAMPlusPlus(model, layer="feat", n=n, noise=0.0, batch_size=bs).explain(x, targets=[1, 2])
        torch.testing.assert_close(e.weights, ref.weights, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(e.maps, ref.maps, atol=1e-5, rtol=0)


def test_smooth_gradcampp_averages_derivatives_over_noisy_copies():
    model = GapNet(deep_tail=True).double()
    x = _x()
    n, sigma = 4, 0.15
    e = camkit.SmoothGradCAMPlusPlus(model, layer="feat", n=n, noise=sigma, batch_size=64, seed=3).explain(x, targets=[1, 2])
    # reference: the same noise draw (n noise images, shared by every image), gradients of each noisy copy by plain autograd
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((n, 3, 8, 8), generator=gen, dtype=x.dtype).repeat(2, 1, 1, 1)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(2, 1, 1, 1)
    xn = x.repeat_interleave(n, 0) + noise * sigma * span.repeat_interleave(n, 0)
    _, gn = _acts_and_grads(model, xn, torch.tensor([1, 2]).repeat_interleave(n))
    gn = gn.view(2, n, *gn.shape[1:])
    d1, d2, d3 = gn.mean(1), (gn**2).mean(1), (gn**3).mean(1)
    a, _ = _acts_and_grads(model, x, torch.tensor([1, 2]))
    den = 2 * d2 + a.sum((2, 3), keepdim=True) * d3
    alpha = torch.where(den != 0, d2 / den, torch.zeros_like(den))
    w = (alpha * torch.relu(d1)).sum((2, 3))
    torch.testing.assert_close(e.weights.double(), w, rtol=1e-5, atol=1e-8)
    # deterministic for a seed, different for another
    e2 = camkit.SmoothGradCAMPlusPlus(model, layer="feat", n=n, noise=sigma, batch_size=64, seed=3).explain(x, targets=[1, 2])
    e3 = camkit.SmoothGradCAMPlusPlus(model, layer="feat", n=n, noise=sigma, batch_size=64, seed=4).explain(x, targets=[1, 2])
    assert torch.equal(e.weights, e2.weights) and not torch.equal(e.weights, e3.weights)
    # an image's map does not depend on its batch-mates nor on batch_size
    for bs in (1, 3):
        e1 = camkit.SmoothGradCAMPlusPlus(model, layer="feat", n=n, noise=sigma, batch_size=bs, seed=3).explain(x[1:], targets=[2])
        torch.testing.assert_close(e1.weights[0], e.weights[1], rtol=1e-9, atol=1e-12)


def test_multi_layer_fusion_is_elementwise_max_of_normalised_maps():
    model = GapNet(deep_tail=True).double()
    x = _x()
    fused = camkit.LayerCAM(model, layer=["feat", "mid"]).explain(x, targets=1)
    m1 = camkit.LayerCAM(model, layer="feat")(x, targets=1)
    m2 = camkit.LayerCAM(model, layer="mid")(x, targets=1)
    torch.testing.assert_close(fused.maps, normalize(torch.maximum(m1, m2)), atol=1e-6, rtol=0)
    assert isinstance(fused.raw, list) and len(fused.raw) == 2
