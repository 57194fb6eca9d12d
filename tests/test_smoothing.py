"""aug_smooth and eigen_smooth on every CAM method, against explicit computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camkit
from camkit.core.postprocess import normalize, upsample
from camkit.methods import Augment
from toy_models import GapNet

CAMS = [m for m in camkit.list_methods() if camkit.methods.get(m).output == "cam" and not camkit.methods.get(m).requires]


def _x(b: int = 2, s: int = 12) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def _hand_eigen(z: np.ndarray) -> np.ndarray:
    """First principal component of contributions z (C, h, w), sign agreeing with sum_c z_c."""
    m = z.reshape(z.shape[0], -1).T
    m = m - m.mean(0)
    v = np.linalg.svd(m, full_matrices=False)[2][0]
    proj = m @ v
    ref = z.sum(0).ravel()
    return (proj if np.dot(proj - proj.mean(), ref - ref.mean()) >= 0 else -proj).reshape(z.shape[1:])


def test_eigen_smooth_of_gradcam_is_the_hand_svd_of_weighted_activations():
    model = GapNet(deep_tail=True).double()
    x = _x()
    cls = torch.tensor([1, 4])
    e = camkit.GradCAM(model, layer="feat", eigen_smooth=True).explain(x, targets=cls.tolist())
    a = model.feat(model.stem(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.tail(a).gather(1, cls.view(-1, 1)).sum(), a)
    w = g.mean((2, 3))  # Grad-CAM's weights
    for b in range(2):
        z = (w[b, :, None, None] * a[b]).detach().numpy()
        ref = normalize(upsample(torch.relu(torch.from_numpy(_hand_eigen(z))).float(), x.shape[-2:]))
        torch.testing.assert_close(e.maps[b], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(e.weights, w.float(), rtol=1e-5, atol=1e-8)  # the method's weights are kept


def test_eigen_smooth_of_layercam_projects_relu_gradient_times_activation():
    model = GapNet(deep_tail=True).double()
    x = _x(1)
    e = camkit.LayerCAM(model, layer="feat", eigen_smooth=True).explain(x, targets=[2])
    a = model.feat(model.stem(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.tail(a)[0, 2], a)
    z = (torch.relu(g[0]) * a[0]).detach().numpy()
    ref = normalize(upsample(torch.relu(torch.from_numpy(_hand_eigen(z))).float(), x.shape[-2:]))
    torch.testing.assert_close(e.maps[0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "smoothgradcam++", "cam"])
def test_eigen_smooth_of_channel_weight_methods_projects_their_weighted_activations(name, one_thread):
    model = GapNet().double()
    x = _x(1, 8)
    plain = camkit.create(name, model, layer="feat").explain(x, targets=camkit.TopK(2))
    smooth = camkit.create(name, model, layer="feat", eigen_smooth=True).explain(x, targets=camkit.TopK(2))
    a = model.feat(model.stem(x)).detach()[0]
    for k in range(2):
        z = (plain.weights[0, k, :, None, None].double() * a).numpy()
        ref = normalize(upsample(torch.relu(torch.from_numpy(_hand_eigen(z))).float(), x.shape[-2:]))
        torch.testing.assert_close(smooth.maps[0, k], ref, atol=1e-5, rtol=0)


def test_every_cam_method_takes_both_options_with_topk(one_thread):
    model = GapNet().double()
    x = _x(2, 8)
    for name in CAMS:
        for kw in ({"eigen_smooth": True}, {"aug_smooth": Augment(scales=(1.0, 1.5))}):
            if not set(kw) <= set(camkit.methods.get(name).smoothing):  # refused at construction (tested with the method)
                with pytest.raises(camkit.InputError, match=next(iter(kw))):
                    camkit.create(name, model, layer="feat", **kw)
                continue
            layer = "auto" if name == "fullgrad" else "feat"
            method = camkit.create(name, model, layer=layer, **kw)
            e = method.explain(x, targets=camkit.TopK(2))
            assert e.maps.shape == (2, 2, 8, 8), (name, kw)
            assert torch.isfinite(e.maps).all() and e.maps.max() <= 1 and e.maps.min() >= 0, (name, kw)
            for k in range(2):  # the k-th map is the map of the k-th class, named explicitly
                one = method.explain(x, targets=e.targets[:, k])
                torch.testing.assert_close(e.maps[:, k], one.maps, atol=1e-5, rtol=0, msg=lambda m: f"{name} {kw} {k}: {m}")


def _view_back(m: torch.Tensor, size, flip: bool) -> torch.Tensor:
    m = m.flip(-1) if flip else m
    return F.interpolate(m.reshape(-1, 1, *m.shape[-2:]), size=size, mode="bilinear",
                         align_corners=False).reshape(*m.shape[:-2], *size)


@pytest.mark.parametrize("name", ["gradcam", "fullgrad"])
def test_aug_smooth_equals_the_average_of_explicit_views_mapped_back(name):
    model = GapNet(deep_tail=True).double()
    x = _x(2, 12)
    layer = "auto" if name == "fullgrad" else "feat"
    aug = Augment(flips=(False, True), scales=(1.0, 1.5))
    e = camkit.create(name, model, layer=layer, aug_smooth=aug).explain(x, targets=camkit.TopK(2))
    plain = camkit.create(name, model, layer=layer)
    base = plain.explain(x, targets=camkit.TopK(2))
    classes = base.targets  # chosen once, on the un-augmented input
    views = []
    for scale in (1.0, 1.5):
        xs = x if scale == 1.0 else F.interpolate(x, size=(18, 18), mode="bilinear", align_corners=False)
        for flip in (False, True):
            m = plain.explain(xs.flip(-1) if flip else xs, targets=classes).maps
            views.append(_view_back(m, (12, 12), flip))
    mean = torch.stack(views).mean(0)
    torch.testing.assert_close(e.maps, normalize(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(e.raw, mean, atol=1e-5, rtol=0)
    assert torch.equal(e.targets, classes) and torch.equal(e.scores, base.scores)


def test_aug_smooth_on_a_fixed_size_model_says_to_use_flips_only():
    class FixedSize(GapNet):
        def forward(self, x):
            if x.shape[-1] != 8:
                raise RuntimeError("expected 8x8 input")
            return super().forward(x)

    model = FixedSize().double()
    with pytest.raises(camkit.InputError, match=r"scales=\(1.0,\)"):
        camkit.GradCAM(model, layer="feat", aug_smooth=True)(_x(1, 8))
    flips_only = camkit.GradCAM(model, layer="feat", aug_smooth=Augment(scales=(1.0,))).explain(_x(1, 8))
    assert flips_only.maps.shape == (1, 8, 8)


def test_smoothing_options_are_checked():
    model = GapNet()
    with pytest.raises(camkit.InputError, match="aug_smooth"):
        camkit.GradCAM(model, aug_smooth="yes")
    with pytest.raises(camkit.InputError, match="scales"):
        Augment(scales=(0.0,))
    with pytest.raises(camkit.InputError, match="not a class activation map"):
        camkit.GuidedBackprop(model, eigen_smooth=True)
    with pytest.raises(camkit.InputError, match="not a class activation map"):
        camkit.GuidedGradCAM(model, aug_smooth=True)
