"""One test for each mutation a mutation audit left alive (issue 22). Each docstring names the
one-line change it catches; each was applied by hand, seen to fail here, and reverted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from camkit.core.postprocess import normalize
from camkit.layers.layout import MAX_PREFIX, readings
from test_perturbation import naive_ablation


# -- layers/layout: the prefix-token range ----------------------------------------------------------------

@pytest.mark.parametrize("patch, size", [((16, 16), (56, 88)), (None, (48, 80))])
def test_every_prefix_count_from_0_to_max_prefix_is_read(patch, size):
    """Mutations: ``range(0, min(MAX_PREFIX, n - 2))`` (no ``+ 1``) in the search without a patch size, or
    ``n - h * w < MAX_PREFIX`` with one: 16 prefix tokens (the most allowed) never tried. At 56x88 with
    16-pixel patches (3x5 by the patch rule) the search without the rule would prefer 7 prefix + 4x6."""
    for prefix in range(MAX_PREFIX + 1):
        t = torch.zeros(2, prefix + 3 * 5, 8)  # (B, prefix + 3x5 patch tokens, C)
        best = readings(t, 2, size, patch)[0]
        assert (best.kind, best.prefix, best.h, best.w) == ("tokens", prefix, 3, 5), (prefix, best)
    t = torch.zeros(2, MAX_PREFIX + 1 + 3 * 5, 8)  # one more is no prefix count camkit reads as 3x5
    assert all((r.prefix, r.h, r.w) != (MAX_PREFIX + 1, 3, 5) for r in readings(t, 2, size, patch))


# -- Ablation-CAM: the closed form is checked on every image ----------------------------------------------

class _WrongGradForImage1(torch.autograd.Function):
    """``p @ W.T + b`` (affine, op by op) whose backward doubles image 1's gradient: the closed form
    (a backward) is then wrong for image 1 only, and only a replay of image 1 can tell."""

    @staticmethod
    def forward(ctx, p, w, b):
        ctx.save_for_backward(w)
        return p @ w.t() + b

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        gp = g @ w
        gp[1:] = gp[1:] * 2
        return gp, None, None


class OddBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.feat = nn.Conv2d(6, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.double().eval()

    def forward(self, x):
        return _WrongGradForImage1.apply(self.feat(self.stem(x)).mean((2, 3)), self.fc.weight, self.fc.bias)


def test_ablation_closed_form_is_checked_on_every_image_of_the_batch():
    """Mutation: the closed form's replay check runs on image 0 only (``range(1)`` for
    ``range(grid.shape[0])`` in ``ClosedForm.weights``): image 1's weights come out doubled."""
    model = OddBackward()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = camkit.AblationCAM(model, "feat").explain(x, targets=[1, 2])
    ref = naive_ablation(model, "feat", x, e.targets[:, None])[:, 0]
    assert ref[1].abs().max() > 1e-3
    torch.testing.assert_close(e.weights, ref.float(), rtol=1e-5, atol=1e-6)


# -- detectors: the input's frame when the padding is vertical ---------------------------------------------

def test_detector_frame_on_a_portrait_input_padded_at_the_bottom():
    """Mutation: the frame's vertical extent taken as the whole grid (``1.0`` for ``h / hp`` in
    ``core/region.py``): only landscape images (padded on the right) were tested."""
    from camkit.core.postprocess import finalize, normalize
    from camkit.core.region import input_region
    from camkit.targets import Detection
    from task_models import tiny_detector

    tiny = tiny_detector()
    x = torch.rand(1, 3, 51, 40, generator=torch.Generator().manual_seed(0))  # x1.6 -> 81 x 64, padded to 96 x 64
    with input_region(tiny) as region_of, torch.no_grad():
        tiny(x)
    torch.testing.assert_close(region_of().rects, torch.tensor([[0.0, 0.0, 81 / 96, 1.0]]))
    e = camkit.GradCAM(tiny, layer="backbone.feat").explain(x, Detection.each(0.0))
    assert e.maps.shape[-2:] == (51, 40)
    # by hand: pixel centre (i, j) of the 51 x 40 input reads the raw grid (h x w, covering the padded
    # 96 x 64 image) at rows (i + 0.5) / 51 * 81/96 * h - 0.5 and columns (j + 0.5) / 40 * w - 0.5, bilinearly
    raw = torch.relu(e.raw[0]).double().numpy()  # (K, h, w)
    h, w = raw.shape[-2:]
    ys = (np.arange(51) + 0.5) / 51 * (81 / 96) * h - 0.5
    xs = (np.arange(40) + 0.5) / 40 * w - 0.5
    ref = []
    for m in raw:
        rows = np.stack([np.interp(xs, np.arange(w), r) for r in m])  # (h, 40); np.interp clamps at the border
        ref.append(np.stack([np.interp(ys, np.arange(h), c) for c in rows.T]).T)  # (51, 40)
    ref = normalize(torch.from_numpy(np.stack(ref))[None].float())
    torch.testing.assert_close(e.maps, ref, rtol=1e-4, atol=1e-5)
    naive = finalize([e.raw], (51, 40))
    assert (naive - e.maps).abs().max() > 0.1  # ignoring the bottom padding stretches the map


# -- FullGrad: the bias terms are constants -----------------------------------------------------------------

class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 5, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(5), nn.ReLU())
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():  # BatchNorm statistics and affine parameters away from the identity
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


@pytest.mark.parametrize("layer", ["auto", "body.0", "body.1"])
def test_fullgrad_maps_carry_no_autograd_graph(layer):
    """Mutation: ``m.bias`` for ``m.bias.detach()`` (conv), or BatchNorm's ``m.weight`` / ``m.bias`` not
    detached, in ``effective_bias``: the maps then hold the parameters' autograd graph (and memory)."""
    torch.manual_seed(0)
    model = ConvBN().eval()
    e = camkit.FullGrad(model, layer=layer).explain(torch.rand(2, 3, 12, 12), camkit.TopK(2))
    for t in (e.maps, e.raw, e.scores):
        assert t.requires_grad is False and t.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


# -- aug_smooth: the classes are chosen once, on the un-augmented input ------------------------------------

class LeftRight(nn.Module):
    """Class 0 scores the left half of ``feat``'s output, class 1 the right half: flipping the image
    swaps the top class."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())

    def forward(self, x):
        a = self.feat(x)
        w = a.shape[-1] // 2
        return torch.stack([a[..., :w].mean((1, 2, 3)), a[..., w:].mean((1, 2, 3)), a.mean((1, 2, 3)) * 0], 1)


def test_aug_smooth_keeps_the_topk_classes_of_the_unaugmented_view():
    """Mutation: ``fixed = targets`` in ``aug_explain`` (TopK re-chosen on each augmented view): the
    flipped view would then explain the other class. (LayerCAM: its maps differ by class here; Grad-CAM's
    channel weights would be equal for both classes.)"""
    from camkit.methods import Augment

    model = LeftRight().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[..., :4] += 1.0  # bright on the left: class 0 first
    plain = camkit.LayerCAM(model, layer="feat")
    classes = plain.explain(x, camkit.TopK(2)).targets
    assert classes.tolist() == [[0, 1], [0, 1]]
    assert plain.explain(x.flip(-1), camkit.TopK(2)).targets.tolist() == [[1, 0], [1, 0]]  # the view disagrees
    aug = camkit.LayerCAM(model, layer="feat", aug_smooth=Augment(flips=(False, True), scales=(1.0,)))
    e = aug.explain(x, camkit.TopK(2))
    assert torch.equal(e.targets, classes)
    # by hand: each class's map on the image and on the flipped image (flipped back), averaged
    for k in range(2):
        views = [plain.explain(x, classes[:, k]).maps, plain.explain(x.flip(-1), classes[:, k]).maps.flip(-1)]
        torch.testing.assert_close(e.maps[:, k], normalize(torch.stack(views).mean(0)), atol=1e-6, rtol=0)


# -- targets: the first index past the last class -------------------------------------------------------------

@pytest.mark.parametrize("targets", [5, [0, 5], torch.tensor([[0, 5], [1, 2]])])
def test_target_equal_to_the_number_of_classes_is_refused(targets):
    """Mutation: ``idx > n`` for ``idx >= n`` in ``targets/classes.py``: class ``n`` (one past the last)
    accepted, then a raw indexing error or a score read from another row."""
    from toy_models import GapNet

    with pytest.raises(camkit.TargetError, match=r"class index 5 is out of range: the model has 5 classes \(valid: 0..4\)"):
        camkit.GradCAM(GapNet().eval(), layer="feat")(torch.rand(2, 3, 8, 8), targets)


# -- viz: the map's resize, by hand ---------------------------------------------------------------------------

def _resize_by_hand(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with pixel centres aligned (``align_corners=False``), clamped at the border."""
    (h, w), (hh, ww) = m.shape, size
    ys = np.clip((np.arange(hh) + 0.5) * h / hh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ww) + 0.5) * w / ww - 0.5, 0, w - 1)
    rows = np.stack([np.interp(xs, np.arange(w), r) for r in m])
    return np.stack([np.interp(ys, np.arange(h), c) for c in rows.T]).T


def test_overlay_and_heatmap_resize_the_map_like_a_reference_resize():
    """Mutation: ``align_corners=True`` in ``viz._map2d``: the overlay tests compared no pixel values."""
    import matplotlib

    from camkit import viz

    g = np.random.default_rng(0)
    m = g.random((5, 6))
    image = g.random((20, 30, 3))
    heat = matplotlib.colormaps["jet"](_resize_by_hand(m, (20, 30)))[..., :3]
    for alpha in (1.0, 0.4):
        out = np.asarray(viz.overlay(image, torch.from_numpy(m), alpha=alpha)).astype(float)
        ref = ((1 - alpha) * image + alpha * heat) * 255
        assert np.abs(out - ref).max() <= 1.0, alpha  # 8-bit rounding
    out = np.asarray(viz.heatmap(m, size=(20, 30))).astype(float)
    assert np.abs(out - heat * 255).max() <= 1.0


# -- serve: each image of a batched job gets its own logits --------------------------------------------------

def test_served_batch_answers_each_image_with_its_own_logits_and_classes():
    """Mutation: ``logits[0]`` for ``logits[i]`` in ``Explainer.run``: every image of a batch reported
    the first image's top classes."""
    from camkit.serve.service import Explainer, Item, Target
    from toy_models import GapNet

    model = GapNet().eval()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 16, 16, generator=g) * (1 + i) for i in range(6)]  # top classes 3, 4, 4, 4, 3, 4
    with torch.no_grad():
        alone = [model(x[None])[0] for x in xs]
    assert len({int(v.argmax()) for v in alone}) > 1  # the images disagree on their top class
    explainer = Explainer({"toy": model}, methods=["gradcam"])
    results = explainer.run(("toy", "gradcam", "top", 1), [Item(x, Target(k=1)) for x in xs])
    for r, want in zip(results, alone):
        torch.testing.assert_close(r.logits, want, rtol=1e-5, atol=1e-6)
        assert r.classes == [int(want.argmax())]
