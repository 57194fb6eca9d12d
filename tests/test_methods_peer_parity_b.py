"""SS-CAM, IS-CAM, FinerCAM, RefineCAM, SESS and LeGrad: each against a hand computation on a small
float64 model, and against pytorch-grad-cam / torchcam where they are deterministic (correlation
>= 0.98 per image on a random-init ResNet-18 ``layer4``; the deliberate differences are named)."""
from __future__ import annotations

import copy
import threading
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camkit
from camkit.core.postprocess import normalize, upsample
from camkit.layers import stage_layers
from camkit.methods import get
from camkit.methods.sess import scaled_size, window_starts
from camkit.targets import Contrast
from toy_models import GapNet, TinyViT

pytestmark = pytest.mark.usefixtures("one_thread")


def corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image of two map batches."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _x(b: int = 2, s: int = 12, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=20).eval()


def peer(module: str, name: str):
    """A peer's class, or a skip when the installed peer predates it (grad-cam 1.5.x, torchcam 0.5.x)."""
    return getattr(pytest.importorskip(module), name, None) or pytest.skip(f"{module} has no {name}")


def _peer_map(cams: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(cams.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)


# -- SS-CAM and IS-CAM ------------------------------------------------------------------------------------

def _hand_score_family(model, x, cls, mask_of, samples):
    """Explicit loop over images, channels and samples: the mean class probability of ``x * mask``,
    softmax over channels, the weighted activations, upsampled and normalised."""
    a = model.feat(model.stem(x))
    maps, weights = [], []
    for b in range(x.shape[0]):
        s = torch.zeros(a.shape[1], dtype=torch.float64)
        for k in range(a.shape[1]):
            m = normalize(upsample(a[b, k], tuple(x.shape[-2:])))
            for j in range(samples):
                with torch.no_grad():
                    s[k] += torch.softmax(model(x[b:b + 1] * mask_of(m, j, k)), -1)[0, cls[b]] / samples
        w = torch.softmax(s, 0)
        weights.append(w)
        maps.append(normalize(upsample(torch.relu((w[:, None, None] * a[b]).sum(0)), tuple(x.shape[-2:]))))
    return torch.stack(maps), torch.stack(weights)


def test_sscam_is_the_explicit_loop_over_noisy_masks_with_the_same_noise():
    model, x, cls = GapNet(c=4).double(), _x(), [1, 3]
    method = camkit.SSCAM(model, "feat", samples=3, std=0.5, seed=7, batch_size=5)
    e = method.explain(x, cls)
    noise = lambda j, k: method.noise(j, k, tuple(x.shape[-2:]), x.device, 7).double()  # noqa: E731
    ref, w = _hand_score_family(model, x, cls, lambda m, j, k: m + 0.5 * noise(j, k), 3)
    torch.testing.assert_close(e.weights.double(), w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.maps.double(), ref, rtol=0, atol=1e-5)
    # the noise is a function of (seed, sample, channel) only: batch_size and the other images do not matter
    torch.testing.assert_close(camkit.SSCAM(model, "feat", samples=3, std=0.5, seed=7, batch_size=1)(x[1:], [3]), e.maps[1:])
    assert not torch.equal(method.noise(0, 1, (4, 4), x.device, 7), method.noise(1, 1, (4, 4), x.device, 7))
    assert not torch.allclose(camkit.SSCAM(model, "feat", samples=3, std=0.5, seed=8)(x, cls), e.maps)


def test_iscam_is_the_explicit_loop_over_scaled_masks():
    model, x, cls = GapNet(c=4).double(), _x(), [0, 2]
    method = camkit.ISCAM(model, "feat", samples=3, batch_size=4)
    torch.testing.assert_close(method.coefficients(), torch.tensor([1 / 3, 1.0, 2.0], dtype=torch.float64))  # j(j+1)/2N
    e = method.explain(x, cls)
    ref, w = _hand_score_family(model, x, cls, lambda m, j, k: m * (j + 1) * (j + 2) / 6, 3)
    torch.testing.assert_close(e.weights.double(), w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.maps.double(), ref, rtol=0, atol=1e-5)


def test_scorecam_family_options_are_checked():
    with pytest.raises(camkit.InputError, match="samples must be a positive int"):
        camkit.SSCAM(GapNet(), "feat", samples=0)
    with pytest.raises(camkit.InputError, match="std must be a finite number >= 0"):
        camkit.SSCAM(GapNet(), "feat", std=-1)
    with pytest.raises(camkit.InputError, match="seed must be an int or None"):
        camkit.SSCAM(GapNet(), "feat", seed=1.5)
    assert get("sscam").expensive and get("iscam").expensive and "35" in get("sscam").cost


def test_sscam_and_iscam_equal_torchcam(resnet18):
    """torchcam scores the logit minus the clean input's (score="logit" here) and normalises each
    channel before upsampling (camkit after); SS-CAM's noise is handed to torchcam."""
    TorchISCAM, TorchSSCAM = peer("torchcam.methods", "ISCAM"), peer("torchcam.methods", "SSCAM")

    x, cls = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)), [3]
    ours = camkit.ISCAM(resnet18, "layer4", samples=2, score="logit", batch_size=256).explain(x, cls)
    with TorchISCAM(resnet18, "layer4", num_samples=2, batch_size=256, input_shape=(3, 64, 64)) as extractor:
        cams = extractor(cls, resnet18(x))
    assert (corr(ours.maps, _peer_map(cams[0], 64)) >= 0.98).all()

    ss = camkit.SSCAM(resnet18, "layer4", samples=1, score="logit", batch_size=256, seed=3)
    ours = ss.explain(x, cls)

    class SameNoise:  # torchcam draws (B, C, H, W) noise per sample; give it camkit's
        def sample(self, size):
            return ss.std * torch.stack([ss.noise(0, k, size[2:], x.device, 3) for k in range(size[1])]).expand(size)

    with TorchSSCAM(resnet18, "layer4", num_samples=1, std=ss.std, batch_size=256, input_shape=(3, 64, 64)) as extractor:
        extractor._distrib = SameNoise()
        cams = extractor(cls, resnet18(x))
    assert (corr(ours.maps, _peer_map(cams[0], 64)) >= 0.98).all()


# -- FinerCAM ---------------------------------------------------------------------------------------------

def _hand_gradcam(model, x, score_fn):
    """Grad-CAM of a scalar score per image: the tail's gradient averaged over positions."""
    a = model.feat(model.stem(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(score_fn(model.tail(a)).sum(), a)
    raw = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    return normalize(upsample(raw.detach(), tuple(x.shape[-2:])))


def test_finercam_explains_the_contrast_computed_by_hand():
    model, x = GapNet(n_cls=6, deep_tail=True).double(), _x()
    e = camkit.FinerCAM(model, "feat", alpha=0.6, references=2).explain(x, [1, 4])
    with torch.no_grad():
        y = model(x)
    refs = []
    for b, c in enumerate([1, 4]):
        order = [int(i) for i in (y[b] - y[b, c]).abs().argsort() if int(i) != c]
        refs.append(order[:2])  # the two classes with the closest logits
    assert e.target.refs[:, 0].tolist() == refs and e.targets.tolist() == [1, 4]

    def contrast(out):
        return torch.stack([out[b, c] - 0.6 * out[b, refs[b]].mean() for b, c in enumerate([1, 4])])

    torch.testing.assert_close(e.scores.double(), contrast(y), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(e.maps.double(), _hand_gradcam(model, x, contrast), rtol=0, atol=1e-5)

    # pytorch-grad-cam's weighting: sum_t p_t (y_c - alpha y_t) / sum_t p_t, through the probabilities too
    f = camkit.FinerCAM(model, "feat", alpha=1.0, references=2, weighting="probability").explain(x, [1, 4])

    def weighted(out):
        p = torch.softmax(out, -1)
        return torch.stack([(p[b, refs[b]] * (out[b, c] - out[b, refs[b]])).sum() / p[b, refs[b]].sum()
                            for b, c in enumerate([1, 4])])

    torch.testing.assert_close(f.maps.double(), _hand_gradcam(model, x, weighted), rtol=0, atol=1e-5)


def test_finercam_with_topk_other_bases_and_bad_input():
    model, x = GapNet(n_cls=6, deep_tail=True), _x(dtype=torch.float32)
    e = camkit.create("finercam:layercam", model, layer="feat").explain(x, camkit.TopK(2))
    assert e.maps.shape == (2, 2, 12, 12) and e.target.refs.shape == (2, 2, 3)
    assert camkit.create("finercam:scorecam", model, layer="feat", batch_size=16)(x).shape == (2, 12, 12)
    one_class = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(camkit.TargetError, match="at least 2 classes"):
        camkit.FinerCAM(one_class, "1")(x)
    with pytest.raises(camkit.TargetError, match="alpha .* must be a finite number >= 0"):
        camkit.FinerCAM(model, "feat", alpha=-1)
    with pytest.raises(camkit.TargetError, match="not a callable"):
        camkit.FinerCAM(model, "feat")(x, lambda out: out[:, 0])
    assert Contrast(None, references=9).resolve(torch.zeros(1, 3), 1).refs.shape == (1, 1, 2)  # at most N - 1


def test_finercam_equals_pytorch_grad_cam_and_torchcam(resnet18):
    PgcFinerCAM, TorchFinerCAM = peer("pytorch_grad_cam", "FinerCAM"), peer("torchcam.methods", "FinerCAM")

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = camkit.FinerCAM(resnet18, "layer4", alpha=1.0, weighting="probability")(x)  # pgc: alpha 1, p-weighted
    ref = torch.from_numpy(PgcFinerCAM(resnet18, [resnet18.layer4])(x, alpha=1))
    assert (corr(ours, ref) >= 0.98).all()
    e = camkit.FinerCAM(resnet18, "layer4").explain(x)  # paper / torchcam: gamma 0.6, mean of 3 references
    with TorchFinerCAM(resnet18, "layer4", input_shape=(3, 64, 64)) as extractor:
        cams = extractor(e.targets.tolist(), resnet18(x))
    assert (corr(e.maps, _peer_map(cams[0], 64)) >= 0.98).all()


# -- RefineCAM --------------------------------------------------------------------------------------------

def test_refinecam_is_the_product_of_normalised_layer_maps_and_normalising_matters():
    model, x = GapNet(deep_tail=True, seed=2).double(), _x(s=16, seed=3)
    e = camkit.RefineCAM(model, ["stem", "feat", "mid"]).explain(x, [1, 2])
    per_layer = [camkit.GradCAMPlusPlus(model, layer).explain(x, [1, 2]).raw.double() for layer in ("stem", "feat", "mid")]
    up = [upsample(r, (16, 16)) for r in per_layer]
    ref = normalize(torch.stack([normalize(u) for u in up]).prod(0))
    torch.testing.assert_close(e.maps.double(), ref, rtol=0, atol=1e-5)
    # without normalising each map first (what pytorch-grad-cam's loop is meant to do and does not: it
    # rebinds its loop variable; its base methods happen to normalise already) a map whose minimum is
    # above 0 is not stretched to [0, 1], and the product is another map
    assert any(float(u.flatten(1).amin(1).max()) > 0.01 for u in up)
    unnormalised = normalize(torch.stack(up).prod(0))
    assert (e.maps.double() - unnormalised).abs().max() > 0.05


def test_refinecam_chooses_the_stages_before_one_layer(resnet18):
    x = torch.rand(1, 3, 64, 64)
    assert stage_layers(resnet18, x, "layer4", 3) == ["layer2", "layer3", "layer4"]
    vgg = nn.Sequential(*[nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)])
    assert stage_layers(vgg, x, "7", 3) == ["1", "4", "7"]  # the last ReLU at each finer grid
    assert camkit.RefineCAM(resnet18, "layer4").layers_for(x) == ["layer2", "layer3", "layer4"]
    assert camkit.RefineCAM(resnet18, "layer4", levels=2).explain(x).layers == ["layer3", "layer4"]
    with pytest.raises(camkit.LayerNotFoundError, match="no layer before"):
        camkit.RefineCAM(TinyViT(), "blocks.1")(torch.rand(1, 3, 16, 16))
    with pytest.raises(camkit.InputError, match="levels must be >= 2"):
        camkit.RefineCAM(resnet18, levels=1)


def test_refinecam_equals_pytorch_grad_cam_and_torchcam(resnet18):
    PgcRefineCAM, TorchRefineCAM = peer("pytorch_grad_cam", "RefineCAM"), peer("torchcam.methods", "RefineCAM")
    TorchLayerCAM = peer("torchcam.methods", "LayerCAM")

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    layers = ["layer2", "layer3", "layer4"]
    e = camkit.RefineCAM(resnet18, layers).explain(x)
    ref = torch.from_numpy(PgcRefineCAM(resnet18, [resnet18.get_submodule(n) for n in layers])(x))
    assert (corr(e.maps, ref) >= 0.98).all()
    # torchcam multiplies at the finest layer's grid unless given target_shape (camkit: at the input, as
    # pytorch-grad-cam); its Grad-CAM++ divides alpha in a masked copy (no effect), so compare with LayerCAM
    e = camkit.RefineCAM(resnet18, layers, base="layercam").explain(x)
    with TorchRefineCAM(resnet18, layers, input_shape=(3, 64, 64), base_method=TorchLayerCAM) as extractor:
        cams = extractor(e.targets.tolist(), resnet18(x), target_shape=(64, 64))
    assert (corr(e.maps, cams[0]) >= 0.98).all()


# -- SESS -------------------------------------------------------------------------------------------------

def _hand_sess(model, x, cls, window, step, sizes, theta=0.0, pool="mean", pre_filter=0.0):
    """Explicit crops: every window of every rescaled image through a hand Grad-CAM, weighted, pasted
    on a canvas of the rescaled image, resized (OpenCV-style bilinear) and fused; OpenCV's blur."""
    h, w = x.shape[-2:]
    out = []
    for b in range(x.shape[0]):
        cams, probs = [], []
        for short in sizes:
            hs, ws = scaled_size(h, w, short)
            xs = F.interpolate(x[b:b + 1], size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
            for y0 in window_starts(hs, step, window):
                for x0 in window_starts(ws, step, window):
                    crop = xs[..., y0:y0 + window, x0:x0 + window]
                    with torch.no_grad():
                        probs.append(float(torch.softmax(model(crop), -1)[0, cls[b]]))
                    cam = _hand_gradcam(model, crop, lambda out: out[:, cls[b]])[0]
                    canvas = torch.zeros(hs, ws, dtype=cam.dtype)
                    canvas[y0:y0 + window, x0:x0 + window] = cam
                    cams.append(F.interpolate(canvas[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0])
        p = np.array(probs)
        kept = np.argsort(p)[int(len(p) * pre_filter):]
        weights = [p[i] / p[kept].max() for i in kept]
        weighted = [cams[i] * wi for i, wi in zip(kept, weights)]
        if pool == "max":
            fused = torch.stack(weighted).amax(0)
        else:
            total, count = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
            for c, wi in zip(weighted, weights):
                above = c > theta + 1e-6 * wi  # 0 in exact arithmetic (rounded up to ~1e-16 here) stays out
                total += torch.where(above, c, 0.0)
                count += above.double()
            fused = torch.where(count > 0, total / count.clamp_min(1), 0.0)
        out.append(torch.from_numpy(cv2.GaussianBlur(fused.numpy(), (11, 11), 5.0, 0)))
    return normalize(torch.stack(out))


@pytest.mark.parametrize("options", [{}, {"pool": "max"}, {"theta": 0.3, "pre_filter": 0.4}])
def test_sess_exact_mode_is_explicit_window_crops_fused(options):
    model = GapNet(deep_tail=True, seed=5).double()
    x = torch.rand(2, 3, 14, 18, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    e = camkit.SESS(model, "feat", mode="exact", window=10, step=6, scales=[14, 17, 20], batch_size=7, **options).explain(x, [1, 3])
    ref = _hand_sess(model, x, [1, 3], 10, 6, [14, 17, 20], **options)
    torch.testing.assert_close(e.maps.double(), ref, rtol=0, atol=2e-5)
    assert e.targets.tolist() == [1, 3] and e.layers == ["feat"]


class ValidNet(nn.Module):
    """Unpadded 3x3 convolutions (stride 1) before the layer ``feat``: a cell's receptive field never
    reaches past an image's edge, so a window's activations are exactly the crop of a larger image's."""

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(8)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=padding), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(4, 5, 3, padding=padding), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(5, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.head(self.feat(self.stem(x)))


def test_sess_fast_mode_equals_exact_mode_where_no_receptive_field_crosses_a_window_edge():
    model, x = ValidNet().double(), _x(2, 16, seed=9)
    opts = dict(window=12, step=4, scales=[16, 20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fast mode applies: no fallback warning
        fast = camkit.SESS(model, "feat", mode="fast", **opts).explain(x, [0, 2])
    exact = camkit.SESS(model, "feat", mode="exact", **opts).explain(x, [0, 2])
    torch.testing.assert_close(fast.maps, exact.maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.raw, exact.raw, rtol=1e-6, atol=1e-8)


def test_sess_fast_mode_differs_only_in_the_border_band_of_each_window():
    """Padded 3x3 convolutions: receptive-field radius 2 at stride 1, so the fast mode's window
    activations equal the exact crop's except in a band of 2 cells along the window's edges."""
    model, x = ValidNet(padding=1).double(), _x(1, 16, seed=10)
    sess = camkit.SESS(model, "feat", mode="fast", window=12, step=4, scales=[20])
    from camkit.methods.sess import _FastSource

    window, scales = sess._geometry(x)
    source = _FastSource(sess.base, ["feat"], [model.feat], scales, window)
    assert source.why_not is None
    sc = scales[0]
    for y0, x0 in sc.starts:
        crop = sc.x[..., y0:y0 + window, x0:x0 + window]
        with torch.no_grad():
            exact = model.feat(model.stem(crop))[0]
        fast = source.cells(sc, y0, x0, window)[0]
        inner = (slice(None), slice(2, -2), slice(2, -2))
        torch.testing.assert_close(fast[inner], exact[inner], rtol=0, atol=1e-12)
        if (y0, x0) != (0, 0) and 0 < y0 < sc.x.shape[-2] - window:  # a window inside the image sees other pixels at its edge
            assert (fast - exact).abs().amax() > 1e-6


def test_sess_falls_back_to_exact_mode_with_a_warning_where_fast_mode_cannot_share():
    class Skip(nn.Module):  # the head reads the stem's output too: a window's replay would read the wrong pixels
        def __init__(self):
            super().__init__()
            self.net = ValidNet(padding=1)

        def forward(self, x):
            s = self.net.stem(x)
            return self.net.head(self.net.feat(s)) + s.mean((1, 2, 3))[:, None]

    model, x = Skip().double(), _x(1, 12, seed=11)
    with pytest.warns(RuntimeWarning, match="reads tensors computed before it"):
        fast = camkit.SESS(model, "net.feat", mode="fast", num_scales=2).explain(x, [1])
    exact = camkit.SESS(model, "net.feat", mode="exact", num_scales=2).explain(x, [1])
    torch.testing.assert_close(fast.maps, exact.maps)
    with pytest.warns(RuntimeWarning, match="not a \\(B, C, h, w\\) grid"):
        camkit.SESS(TinyViT(), "blocks.1", num_scales=1, mode="fast").explain(torch.rand(1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a base that is not from_layer runs exact mode, as documented
        camkit.SESS(model, "net.feat", base="scorecam", num_scales=1, batch_size=8, mode="fast").explain(x, [1])


def test_sess_bad_options_name_the_parameter_and_range():
    model, x = GapNet(), _x(1, 12, dtype=torch.float32)
    for kw, msg in [({"pre_filter": 1.0}, "pre_filter must be a number in \\[0, 1"), ({"pool": "sum"}, "pool must be"),
                    ({"mode": "turbo"}, "mode must be"), ({"scales": []}, "scales must be a non-empty list"),
                    ({"window": 0}, "window must be a positive int"), ({"num_scales": 0}, "num_scales must be")]:
        with pytest.raises(camkit.InputError, match=msg):
            camkit.SESS(model, "feat", **kw)
    with pytest.raises(camkit.InputError, match="window must be between 1 and the input's shorter side 12"):
        camkit.SESS(model, "feat", window=13)(x)
    with pytest.raises(camkit.InputError, match="every scale must be >= the window"):
        camkit.SESS(model, "feat", scales=[8])(x)
    with pytest.raises(camkit.InputError, match="attributions"):
        camkit.SESS(model, "feat", base="guided-backprop")


def test_sess_equals_pytorch_grad_cam(resnet18):
    PgcGradCAM, PgcSESS = peer("pytorch_grad_cam", "GradCAM"), peer("pytorch_grad_cam", "SESS")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, cls = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)), [3, 7]
    ours = camkit.SESS(resnet18, "layer4", num_scales=3, mode="exact")(x, cls)
    with PgcSESS(resnet18, [resnet18.layer4], base_method=PgcGradCAM, num_scales=3) as cam:
        ref = torch.from_numpy(cam(x, [ClassifierOutputTarget(c) for c in cls]))
    assert (corr(ours, ref) >= 0.98).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)  # the same windows, weights and fusion


# -- LeGrad -----------------------------------------------------------------------------------------------

def _tiny_torchvision_vit(seed: int = 0) -> torchvision.models.VisionTransformer:
    torch.manual_seed(seed)
    m = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8,
                                             mlp_dim=16, num_classes=5)
    nn.init.normal_(m.heads.head.weight, std=0.5)  # torchvision starts the head at zero (no gradient)
    return m.eval().double()


def _hand_vit(m, x, override=None):
    """torchvision's ViT forward written out, with explicit attention probabilities ``P[l]`` (each
    replaced by ``override[l]`` when given); returns the blocks' outputs and the P's."""
    n = x.shape[0]
    t = m.conv_proj(x).flatten(2).transpose(1, 2)
    z = torch.cat([m.class_token.expand(n, -1, -1), t], 1) + m.encoder.pos_embedding
    outs, probs = [], []
    for i, blk in enumerate(m.encoder.layers):
        a = blk.self_attention
        y = blk.ln_1(z)
        q, k, v = F.linear(y, a.in_proj_weight, a.in_proj_bias).chunk(3, -1)
        split = lambda u: u.view(n, -1, a.num_heads, a.head_dim).transpose(1, 2)  # noqa: E731
        p = torch.softmax(split(q) @ split(k).transpose(-1, -2) / a.head_dim ** 0.5, -1)
        if override is not None:
            p = override[i]
        probs.append(p)
        o = (p @ split(v)).transpose(1, 2).reshape(n, -1, a.embed_dim)
        z = z + a.out_proj(o)
        z = z + blk.mlp(blk.ln_2(z))
        outs.append(z)
    return outs, probs


def test_legrad_is_the_hand_gradient_with_respect_to_explicit_attention_probabilities():
    m, x, cls = _tiny_torchvision_vit(), _x(2, 16, seed=12), [1, 4]
    e = camkit.LeGrad(m).explain(x, cls)
    outs, probs = _hand_vit(m, x)
    score = lambda z: m.heads(m.encoder.ln(z.mean(1)))[[0, 1], cls]  # noqa: E731
    maps = []
    for z, p in zip(outs, probs):
        (g,) = torch.autograd.grad(score(z).sum(), p, retain_graph=True)
        maps.append(torch.relu(g).mean((1, 2))[:, 1:].reshape(2, 4, 4))
    torch.testing.assert_close(e.raw.double(), torch.stack(maps).mean(0), rtol=1e-5, atol=1e-9)
    # the hand gradient itself, by central differences of the score in one probability
    p = [q.detach().clone() for q in probs]
    eps, (b, h, i, j) = 1e-6, (1, 1, 3, 7)
    plus, minus = [q.clone() for q in p], [q.clone() for q in p]
    plus[1][b, h, i, j] += eps
    minus[1][b, h, i, j] -= eps
    with torch.no_grad():
        fd = float(score(_hand_vit(m, x, plus)[0][1])[b] - score(_hand_vit(m, x, minus)[0][1])[b]) / (2 * eps)
    (g,) = torch.autograd.grad(score(outs[1])[b], probs[1])
    assert abs(fd - float(g[b, h, i, j])) < 1e-6 * max(1.0, abs(fd))


def test_legrad_equals_torchcam_on_torchvision():
    TorchLeGrad = peer("torchcam.methods", "LeGrad")

    m = _tiny_torchvision_vit(seed=1).float()
    x, cls = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(13)), [0, 3]
    e = camkit.LeGrad(m).explain(x, cls)
    with TorchLeGrad(m, list(m.encoder.layers)) as extractor:
        cams = extractor(cls, m(x))
    assert (corr(e.raw, cams[0]) >= 0.98).all()


def _timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2,
                             num_classes=5).eval().double()


def _hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=16, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval().double()


def _reference_legrad(model, x, cls, eager, attn_of, block_of, head):
    """LeGrad on a deep copy switched to eager attention the ordinary way, P read by plain hooks."""
    m = eager(copy.deepcopy(model))
    probs, outs = [], []
    for blk in block_of(m):
        blk.register_forward_hook(lambda _m, _a, o: outs.append(o))
    for at in attn_of(m):
        at.register_forward_hook(lambda _m, _a, o: probs.append(o[1] if isinstance(o, tuple) else o))
    xr = x.clone().requires_grad_(True)
    m(xr)
    maps = []
    for z, p in zip(outs, probs):
        (g,) = torch.autograd.grad(head(m, z)[[0, 1], cls].sum(), p, retain_graph=True)
        maps.append(torch.relu(g).mean((1, 2))[:, 1:].reshape(2, 4, 4))
    return torch.stack(maps).mean(0)


def test_legrad_on_timm_and_hugging_face_vits_reads_eager_attention_for_the_call_only():
    x, cls = _x(2, 16, seed=14), [2, 1]
    timm_vit, hf_vit = _timm_vit(), _hf_vit()
    cases = [
        (timm_vit, lambda m: [setattr(b.attn, "fused_attn", False) for b in m.blocks] and m,
         lambda m: [b.attn.attn_drop for b in m.blocks], lambda m: list(m.blocks),
         lambda m, z: m.head(m.fc_norm(m.norm(z.mean(1))))),
        (hf_vit, lambda m: (setattr(m.config, "_attn_implementation", "eager"), m)[1],
         lambda m: [blk.attention for blk in m.vit.layers] if hasattr(m.vit, "layers") else [blk.attention for blk in m.vit.encoder.layer],
         lambda m: list(m.vit.layers) if hasattr(m.vit, "layers") else list(m.vit.encoder.layer),
         lambda m, z: m.classifier(m.vit.layernorm(z.mean(1)))),
    ]
    for model, eager, attn_of, block_of, head in cases:
        before = (model.config._attn_implementation if hasattr(model, "config") else [b.attn.fused_attn for b in model.blocks])
        with torch.no_grad():
            ref_out = model(x)
        e = camkit.LeGrad(model).explain(x, cls)
        ref = _reference_legrad(model, x, cls, eager, attn_of, block_of, head)
        torch.testing.assert_close(e.raw.double(), ref, rtol=1e-4, atol=1e-9)
        assert e.raw.abs().sum() > 0
        after = (model.config._attn_implementation if hasattr(model, "config") else [b.attn.fused_attn for b in model.blocks])
        assert after == before and before in ("sdpa", [True, True])  # fused before and after; never flipped
        assert not any("forward" in mod.__dict__ or mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())
        with torch.no_grad():
            out = model(x)
        torch.testing.assert_close(getattr(out, "logits", out), getattr(ref_out, "logits", ref_out))


def test_legrad_eager_attention_does_not_reach_another_threads_forward():
    model, x = _timm_vit(), _x(1, 16, seed=15)
    seen: list[int] = []
    model.blocks[0].attn.attn_drop.register_forward_hook(lambda *a: seen.append(threading.get_ident()))  # eager path only
    parked, release = threading.Event(), threading.Event()

    def park(_m, _a):
        if threading.current_thread().name == "legrad" and not release.is_set():
            parked.set()
            assert release.wait(60)

    model.blocks[1].register_forward_pre_hook(park)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(e=camkit.LeGrad(model).explain(x, [1])), name="legrad")
    t.start()
    try:
        assert parked.wait(60)  # the LeGrad call is inside its forward, block 0 already ran eagerly
        with torch.no_grad():
            model(x)  # this thread's forward takes the fused path
    finally:
        release.set()
        t.join(60)
    assert "e" in box and seen and threading.get_ident() not in seen and set(seen) == {t.ident}


def test_legrad_layers_head_and_errors():
    vit = TinyViT()  # nn.TransformerEncoderLayer blocks, a norm + head on the class token
    e = camkit.LeGrad(vit, ["blocks.1"]).explain(torch.rand(2, 3, 16, 16), camkit.TopK(2))
    assert e.maps.shape == (2, 2, 16, 16) and e.layers == ["blocks.1"]
    seq = TinyViT(seq_first=True)
    assert camkit.LeGrad(seq)(torch.rand(2, 3, 16, 16)).shape == (2, 16, 16)
    with pytest.raises(camkit.UnsupportedModelError, match="explains vision transformers"):
        camkit.LeGrad(GapNet())(torch.rand(1, 3, 12, 12))
    with pytest.raises(camkit.UnsupportedModelError, match="holds no supported attention"):
        camkit.LeGrad(vit, "norm")(torch.rand(1, 3, 16, 16))
    bare = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Flatten(2))

    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.blocks = bare, nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)])
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            z = self.embed(x).transpose(1, 2)
            for b in self.blocks:
                z = b(z)
            return self.fc(z.mean(1))

    with pytest.raises(camkit.UnsupportedModelError, match="pass head=callable"):
        camkit.LeGrad(NoHead())(torch.rand(1, 3, 16, 16))
    nh = NoHead()
    assert camkit.LeGrad(nh, head=lambda z: nh.fc(z.mean(1)))(torch.rand(1, 3, 16, 16)).shape == (1, 16, 16)
    assert get("legrad").requires == ("attention",) and not get("gradcam").requires


# -- registry, CLI, server ---------------------------------------------------------------------------------

def test_meta_base_names_in_the_registry():
    cls = get("sess:gradcam++")
    assert cls is get("SESS:GradCAM-PlusPlus") and cls.name == "sess:gradcam++" and cls.expensive
    assert get("finercam:scorecam").expensive and not get("finercam").expensive and get("refinecam").uses_gradients
    assert not get("finercam:eigencam").uses_gradients and "contrast" in get("finercam:eigencam").cost
    m = camkit.create("refinecam:layercam", GapNet(deep_tail=True), layer="feat")
    assert isinstance(m.base, camkit.LayerCAM) and m.layers_for(torch.rand(1, 3, 12, 12)) == ["stem", "feat"]
    assert isinstance(camkit.create("sess:finercam:layercam", GapNet(), layer="feat").base.base, camkit.LayerCAM)
    with pytest.raises(camkit.CamkitError, match="'gradcam' is not a meta-method"):
        get("gradcam:layercam")
    with pytest.raises(camkit.InputError, match="already names its base"):
        camkit.create("sess:gradcam", GapNet(), layer="feat", base="layercam")
    assert all(":" not in n for n in camkit.list_methods())
    assert {"sscam", "iscam", "legrad", "finercam", "refinecam", "sess"} <= set(camkit.list_methods())


def test_cli_explain_takes_meta_base_names(tmp_path, capsys):
    from camkit import viz
    from camkit.cli import main
    from camkit.data import digits

    img = tmp_path / "a.png"
    viz.to_pil(digits(1, seed=5)[0].image).save(img)
    rc = main(["explain", str(img), "--model", "digits_resnet", "--weights", "random", "--method",
               "finercam:layercam,refinecam", "--threads", "1", "-o", str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "finercam:layercam ->" in out and "refinecam ->" in out
    assert (tmp_path / "out" / "a_finercamlayercam.npy").exists()
