"""The methods pytorch-grad-cam 1.5 added -- Grad-CAM element-wise, ShapleyCAM (and the ReST target),
KPCA-CAM, FEM, Seg-Eigen-CAM, RandomCAM, Deep Feature Factorization -- against values derived by hand
on small float64 models, against scikit-learn (KernelPCA, NMF) on the same matrices, and against
pytorch-grad-cam itself on a torchvision ResNet-18.

Deliberate differences from pytorch-grad-cam, checked below: DFF's default initialisation (nndsvda;
pgc's random init with seed 0 is ``init="random"``) and its concept embeddings' scale (labels only;
the maps are the same); RandomCAM's random stream (torch, seeded; pgc: numpy's global state, so no
cross-check). The other five have the same formula and sign rules as pgc.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from scipy import stats
from sklearn.decomposition import NMF, KernelPCA
from torch import nn

import camkit
from camkit.core import engine
from camkit.core.postprocess import normalize, upsample
from camkit.methods.dff import nmf, nmf_init
from camkit.methods.fem import fem_weights
from camkit.methods.kpca import KERNELS, kernel_pca
from camkit.targets import Detection, ReST, Segmentation
from task_models import ToySeg, tiny_detector
from toy_models import GapNet, acts_and_grads

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = ["gradcam-elementwise", "shapleycam", "kpcacam", "fem", "segeigencam", "randomcam", "dff"]


class CurvedNet(nn.Module):
    """conv trunk -> ``feat`` (the explained layer) -> ``fc(mean_grid(b - b^3))``: a tail with curvature.

    ``S_k = sum_c W_kc mean_p(a_cp - a_cp^3) + b_k``, so ``dS/da_cp = W_kc (1 - 3 a_cp^2) / P`` and the
    Hessian is diagonal, ``(H a)_cp = -6 W_kc a_cp^2 / P``: ShapleyCAM's ``mean_p(g - H a / 2) = W_kc / P``
    (CAM's weights / P) while Grad-CAM's is ``W_kc mean_p(1 - 3 a^2) / P``.
    """

    def __init__(self, seed: int = 0, trunk: nn.Module | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = trunk if trunk is not None else nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.feat = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc((a - a ** 3).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.feat(self.stem(x)))


class NoBackward(torch.autograd.Function):
    """Identity whose backward fails: a trunk made of it proves nothing before the layer is differentiated."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        raise AssertionError("a backward ran through the trunk")


class Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NoBackward.apply(torch.relu(self.conv(x)))


def _x(b: int = 2, s: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _final(raw: torch.Tensor, size) -> torch.Tensor:
    return normalize(upsample(torch.relu(raw).float(), size))


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _tail_grad(model: CurvedNet, a: torch.Tensor, score) -> torch.Tensor:
    a = a.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model.tail(a)).sum(), a)
    return g


def _fd_hvp(model: CurvedNet, a: torch.Tensor, score, eps: float = 1e-5) -> torch.Tensor:
    """``H a`` by central finite differences of the gradient along ``a`` itself."""
    return (_tail_grad(model, a + eps * a, score) - _tail_grad(model, a - eps * a, score)) / (2 * eps)


def _rest(c: torch.Tensor):
    return lambda z: 2 * z.gather(1, c.view(-1, 1)) - z.logsumexp(1, keepdim=True)


# ------------------------------------------------------------------------------------------ ShapleyCAM


@pytest.mark.parametrize("rest", [False, True])
def test_engine_hessian_vector_product_equals_finite_differences_of_the_gradient(rest):
    model = CurvedNet().double()
    x = _x()
    cls = torch.tensor([1, 3])
    p = engine.forward(model, x, [model.feat], ["feat"], record=True)
    score = _rest(cls) if rest else (lambda z: z.gather(1, cls.view(-1, 1)))
    (g,), (hv,) = engine.hessian_vector_products(p, score(p.logits))
    a = model.feat(model.stem(x)).detach()
    torch.testing.assert_close(g[0], _tail_grad(model, a, score), rtol=1e-10, atol=1e-12)
    fd = _fd_hvp(model, a, score)
    assert fd.abs().max() > 1e-2  # the head has curvature: H a is not 0
    torch.testing.assert_close(hv[0], fd, rtol=1e-6, atol=1e-9)
    if not rest:  # the diagonal closed form of CurvedNet's docstring
        w = model.fc.weight.detach()[cls][:, :, None, None]
        torch.testing.assert_close(hv[0], -6 * w * a ** 2 / a[0, 0].numel(), rtol=1e-10, atol=1e-12)


def test_shapleycam_weights_are_gradient_minus_half_hvp_and_differ_from_gradcam():
    model = CurvedNet().double()
    x = _x()
    cls = torch.tensor([1, 3])
    e = camkit.ShapleyCAM(model, layer="feat").explain(x, targets=cls.tolist())
    a = model.feat(model.stem(x)).detach()
    score = lambda z: z.gather(1, cls.view(-1, 1))  # noqa: E731
    w = (_tail_grad(model, a, score) - 0.5 * _fd_hvp(model, a, score)).mean((2, 3))
    torch.testing.assert_close(e.weights, w.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.weights, (model.fc.weight.detach()[cls] / 16).float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.maps, _final(torch.einsum("bc,bchw->bhw", w, a), x.shape[-2:]), atol=1e-5, rtol=0)
    grad = camkit.GradCAM(model, layer="feat").explain(x, targets=cls.tolist())
    assert (e.weights - grad.weights).abs().max() > 1e-2


def test_shapleycam_rest_explains_2z_minus_logsumexp_and_reports_the_classes():
    model = CurvedNet().double()
    x = _x()
    e = camkit.ShapleyCAM(model, layer="feat", score="rest").explain(x, targets=camkit.TopK(2))
    z = model(x).detach()
    cls = z.topk(2, 1).indices
    assert torch.equal(e.targets, cls) and e.maps.shape == (2, 2, 8, 8)
    torch.testing.assert_close(e.scores, 2 * z.gather(1, cls) - z.logsumexp(1, keepdim=True))
    a = model.feat(model.stem(x)).detach()
    for k in range(2):
        score = _rest(cls[:, k])
        w = (_tail_grad(model, a, score) - 0.5 * _fd_hvp(model, a, score)).mean((2, 3))
        torch.testing.assert_close(e.weights[:, k], w.float(), rtol=1e-5, atol=1e-7)
    # the target works for any method, and ShapleyCAM accepts it given explicitly
    explicit = camkit.ShapleyCAM(model, layer="feat").explain(x, targets=ReST(camkit.TopK(2)))
    torch.testing.assert_close(explicit.maps, e.maps)
    g = camkit.GradCAM(model, layer="feat").explain(x, targets=ReST([0, 4]))
    torch.testing.assert_close(g.scores, 2 * z[[0, 1], [0, 4]] - z.logsumexp(1))


def test_shapleycam_never_differentiates_the_trunk():
    model = CurvedNet(trunk=Trunk()).double()
    x = _x()
    with pytest.raises(AssertionError, match="through the trunk"):  # the trunk really cannot be differentiated
        torch.autograd.grad(model(x.requires_grad_(True))[:, 0].sum(), x)
    e = camkit.ShapleyCAM(model, layer="feat").explain(x.detach(), targets=[0, 2])
    torch.testing.assert_close(e.weights, (model.fc.weight.detach()[[0, 2]] / 16).float(), rtol=1e-5, atol=1e-7)


def test_shapleycam_equals_gradcam_on_a_relu_net_with_a_linear_head():
    model = GapNet(deep_tail=True).double()  # piecewise linear after the layer: H a = 0
    x = _x()
    s = camkit.ShapleyCAM(model, layer="feat").explain(x, camkit.TopK(2))
    g = camkit.GradCAM(model, layer="feat").explain(x, camkit.TopK(2))
    torch.testing.assert_close(s.weights, g.weights)
    torch.testing.assert_close(s.maps, g.maps)


# ------------------------------------------------------------------------- element-wise, FEM, SegEigen


def test_gradcam_elementwise_is_the_channel_sum_of_relu_gradient_times_activation():
    model = GapNet(deep_tail=True).double()
    x = _x()
    cls = torch.tensor([0, 4])
    e = camkit.GradCAMElementWise(model, layer="feat").explain(x, targets=cls.tolist())
    a, g = acts_and_grads(model, x, cls)
    raw = torch.relu(g * a).sum(1)
    torch.testing.assert_close(e.raw, torch.relu(raw).float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.maps, _final(raw, x.shape[-2:]), atol=1e-5, rtol=0)
    hires = camkit.HiResCAM(model, layer="feat").explain(x, targets=cls.tolist())  # keeps the negative products
    assert (hires.raw - e.raw).abs().max() > 1e-3


@pytest.mark.parametrize("k", [2.0, 0.5])
def test_fem_weights_are_the_share_of_positions_above_mean_plus_k_std(k):
    model = GapNet(c=8).double()
    x = _x(2, 16)
    e = camkit.FEM(model, layer="feat", k=k).explain(x, targets=camkit.TopK(3))
    a = model.feat(model.stem(x)).detach().numpy()
    w = np.zeros(a.shape[:2])
    for b in range(a.shape[0]):
        for c in range(a.shape[1]):
            v = a[b, c].ravel()
            w[b, c] = np.mean(v > v.mean() + k * v.std())  # population std
    assert w.max() > 0
    torch.testing.assert_close(e.weights, torch.from_numpy(w).float()[:, None].expand(-1, 3, -1))
    raw = torch.from_numpy(np.einsum("bc,bchw->bhw", w, a))
    for j in range(3):  # class-agnostic
        torch.testing.assert_close(e.maps[:, j], _final(raw, x.shape[-2:]), atol=1e-5, rtol=0)


def test_segeigencam_is_the_first_component_of_abs_gradient_times_activation_with_the_peak_positive():
    model = GapNet(deep_tail=True).double()
    x = _x(2, 12)
    cls = torch.tensor([2, 1])
    e = camkit.SegEigenCAM(model, layer="feat").explain(x, targets=cls.tolist())
    a, g = acts_and_grads(model, x, cls)
    for b in range(2):
        z = (g[b].abs() * a[b]).numpy()
        m = z.reshape(z.shape[0], -1).T
        m = m - m.mean(0)
        proj = m @ np.linalg.svd(m, full_matrices=True)[2][0]  # its sign is arbitrary
        if abs(proj.min()) > abs(proj.max()):  # Eq. 13
            proj = -proj
        ref = torch.from_numpy(proj.reshape(z.shape[1:]))
        torch.testing.assert_close(e.maps[b], _final(ref, x.shape[-2:]), atol=1e-5, rtol=0)
        assert (e.maps[b] - _final(-ref, x.shape[-2:])).abs().max() > 0.1  # the other sign is another map


def test_segeigencam_on_segmentation_and_every_new_method_on_task_targets():
    seg = ToySeg(channels=6).double()
    x = _x(2, 32)
    main = seg(x).argmax(1).flatten(1).mode(1).values.tolist()  # each image's most predicted class
    for name in NEW:
        e = camkit.create(name, seg, layer="feat").explain(x, None if name == "dff" else Segmentation(main))
        assert e.maps.shape == ((2, 5, 32, 32) if name == "dff" else (2, 32, 32)), name
        assert bool(torch.isfinite(e.maps).all()) and float(e.maps.amax()) > 0, name
    det = tiny_detector()
    xd = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    for name in NEW:
        if name == "shapleycam":  # torchvision's roi_align has no double backward: said plainly
            with pytest.raises(camkit.UnsupportedModelError, match="roi_align.*gradcam"):
                camkit.create(name, det, layer="backbone.feat").explain(xd, Detection.each(0.0))
            continue
        e = camkit.create(name, det, layer="backbone.feat").explain(xd, None if name == "dff" else Detection.each(0.0))
        assert e.maps.shape == ((1, 5, 64, 80) if name == "dff" else (1, 4, 64, 80)), name
        assert bool(torch.isfinite(e.maps).all()), name


# ---------------------------------------------------------------------------------------------- KPCA


@pytest.mark.parametrize("kernel", KERNELS)
def test_kpca_equals_scikit_learn_kernel_pca_on_the_same_matrix(kernel):
    model = GapNet(c=8).double()
    x = _x(2, 12)
    a = model.feat(model.stem(x)).detach()
    for gamma in (None, 0.3):
        ours = kernel_pca(a, kernel, gamma)
        for b in range(2):
            m = a[b].reshape(8, -1).T.numpy()
            ref = KernelPCA(n_components=1, kernel=kernel, gamma=gamma).fit_transform(m - m.mean(0))[:, 0]
            np.testing.assert_allclose(ours[b].ravel().numpy(), ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    e = camkit.KPCACAM(model, layer="feat", kernel=kernel).explain(x, targets=camkit.TopK(2))
    torch.testing.assert_close(e.raw[:, 0], torch.relu(kernel_pca(a, kernel)).float())
    torch.testing.assert_close(e.maps[:, 1], e.maps[:, 0])  # class-agnostic


# ----------------------------------------------------------------------------------------------- DFF


@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_nmf_equals_scikit_learn_nmf_with_the_same_init(init):
    x = torch.rand(12, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = NMF(n_components=3, init=init, random_state=0, solver="cd", max_iter=200, tol=1e-4)
        w_ref = sk.fit_transform(x.numpy())
    w0, h0 = nmf_init(x, 3, init, seed=0)
    start = (w0.clone(), h0.clone())
    w, h, it = nmf(x, w0, h0)
    assert it == sk.n_iter_ and torch.equal(w0, start[0]) and torch.equal(h0, start[1])  # inputs left as they were
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h.numpy(), sk.components_, rtol=1e-9, atol=1e-12)
    # several problems at once: each stops at its own iteration, as scikit-learn run on it alone
    x2 = torch.rand(12, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64) ** 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk2 = NMF(n_components=3, init=init, random_state=0, solver="cd", max_iter=200, tol=1e-4)
        w2_ref = sk2.fit_transform(x2.numpy())
    assert sk2.n_iter_ != sk.n_iter_
    w1, h1 = nmf_init(x2, 3, init, seed=0)
    ws, hs, it = nmf(torch.stack([x, x2]), torch.stack([w0, w1]), torch.stack([h0, h1]))
    assert it == max(sk.n_iter_, sk2.n_iter_)
    np.testing.assert_allclose(ws[0].numpy(), w_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ws[1].numpy(), w2_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hs[1].numpy(), sk2.components_, rtol=1e-9, atol=1e-12)


def _sk_dff(m: np.ndarray, k: int):
    """scikit-learn's NMF of ``m - min`` (per row), H rows scaled to peak 1: concepts, maps, shift."""
    offset = m.min(1, keepdims=True)
    sk = NMF(n_components=k, init="nndsvda", solver="cd", max_iter=2000, tol=1e-4)
    w = sk.fit_transform(m - offset)
    peak = sk.components_.max(1)
    return w * peak, sk.components_ / peak[:, None], offset


@pytest.mark.parametrize("joint", [False, True])
def test_dff_concepts_maps_and_labels_equal_scikit_learn_nmf_of_the_activations(joint):
    model = GapNet(c=8, n_cls=5).double()
    x = _x(3, 16)
    e = camkit.DFF(model, layer="feat", k=3, joint=joint, max_iter=2000).explain(x)
    a = model.feat(model.stem(x)).detach()
    if joint:  # one (C, B * positions) matrix: concepts shared by the images
        w, h, offset = _sk_dff(a.transpose(0, 1).reshape(8, -1).numpy(), 3)
        parts = [(w, h[:, 64 * b:64 * (b + 1)], offset) for b in range(3)]
    else:  # each image's (C, positions)
        parts = [_sk_dff(a[b].reshape(8, -1).numpy(), 3) for b in range(3)]
    assert e.output == "concepts" and e.maps.shape == (3, 3, 16, 16)
    for b, (w, h, offset) in enumerate(parts):
        maps = torch.from_numpy(h.reshape(3, 8, 8)).float()
        torch.testing.assert_close(e.raw[b], maps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e.maps[b], normalize(upsample(maps, (16, 16))), atol=1e-5, rtol=0)
        torch.testing.assert_close(e.weights[b], torch.from_numpy(w.T).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e.scores[b], maps.flatten(1).mean(-1), rtol=1e-5, atol=1e-6)
        logits = model.fc(torch.from_numpy((offset + w).T)).detach()  # the head at each concept's peak activation
        torch.testing.assert_close(e.concept_scores[b], logits.float(), rtol=1e-5, atol=1e-6)
        assert torch.equal(e.targets[b], logits.argmax(1))
    if not joint:  # an image's concepts do not depend on its batch
        alone = camkit.DFF(model, layer="feat", k=3, max_iter=2000).explain(x[1:2])
        torch.testing.assert_close(alone.maps[0], e.maps[1])
    none = camkit.DFF(model, layer="feat", k=3, head=None).explain(x)
    assert none.targets is None and none.concept_scores is None
    own = camkit.DFF(model, layer="feat", k=3, joint=joint, max_iter=2000, head=lambda t: t[:, :4] * 2).explain(x)
    w, _, offset = parts[2]
    torch.testing.assert_close(own.concept_scores[2], torch.from_numpy(2 * (offset + w).T[:, :4]).float(),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ RandomCAM


def test_randomcam_is_a_seeded_uniform_weighting_independent_of_the_target():
    model = torchvision.models.resnet18().eval()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cam = camkit.RandomCAM(model, layer="layer4")
    e = cam.explain(x, targets=camkit.TopK(3))
    w = e.weights[:, 0].double()  # (4, 512)
    assert torch.equal(e.weights[:, 0], e.weights[:, 2]) and torch.equal(e.maps[:, 0], e.maps[:, 2])
    assert float(w.min()) >= -1 and float(w.max()) < 1
    assert stats.kstest(w.flatten().numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3
    assert abs(float(w.mean())) < 0.05 and abs(float(w.var()) - 1 / 3) < 0.03
    assert float((w[0] - w[1]).abs().mean()) > 0.3  # images get their own draws
    again = cam.explain(x, targets=[7, 8, 9, 10])  # same seed, other targets: same maps
    torch.testing.assert_close(again.maps, e.maps[:, 0])
    other = camkit.RandomCAM(model, layer="layer4", seed=1).explain(x)
    assert float((other.weights - e.weights[:, 0]).abs().mean()) > 0.3
    fresh = camkit.RandomCAM(model, layer="layer4", seed=None)
    assert not torch.equal(fresh.explain(x).weights, fresh.explain(x).weights)
    with torch.no_grad():
        a = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
    raw = torch.einsum("bc,bchw->bhw", e.weights[:, 0], a)
    torch.testing.assert_close(e.raw[:, 0], torch.relu(raw), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- pytorch-grad-cam itself


def test_cross_check_with_pytorch_grad_cam_on_resnet18_layer4():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as pgc_dff
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cls = model(x).argmax(1).tolist()
    pairs = [("gradcam-elementwise", pgc.GradCAMElementWise, {}, ClassifierOutputTarget),
             ("shapleycam", pgc.ShapleyCAM, {}, ClassifierOutputTarget),
             ("shapleycam", pgc.ShapleyCAM, {"score": "rest"}, ClassifierOutputReST),
             ("kpcacam", pgc.KPCA_CAM, {}, ClassifierOutputTarget),
             ("fem", pgc.FEM, {}, ClassifierOutputTarget),
             ("segeigencam", pgc.SegEigenCAM, {}, ClassifierOutputTarget)]
    for name, peer, kw, target in pairs:
        ours = camkit.create(name, model, layer="layer4", **kw)(x, targets=cls).numpy()
        with peer(model, [model.layer4]) as p:
            theirs = p(x, targets=[target(c) for c in cls])
        assert (_corr(ours, theirs) >= 0.98).all(), (name, kw, _corr(ours, theirs))
    # DFF with pgc's initialisation (random, seed 0): the same concept maps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = camkit.DFF(model, layer="layer4", k=3, joint=True, init="random", seed=0).explain(x)
        with torch.no_grad():
            feats = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
        _, expl = pgc_dff(feats.numpy().copy(), n_components=3)
    theirs = np.stack([scale_cam_image(m, (96, 96)) for m in expl])
    assert (_corr(e.maps.numpy().reshape(-1, 96, 96), theirs.reshape(-1, 96, 96)) >= 0.98).all()


# ------------------------------------------------------------------------- features, grids, bad input


def test_every_new_method_with_auto_layer_batches_topk_and_the_cli(tmp_path, capsys):
    from camkit.cli import main
    from camkit import viz
    from camkit.data import digits

    model = torchvision.models.resnet18().eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for name in NEW:
        cls = camkit.methods.get(name)
        assert isinstance(cls.cost, str) and cls.expensive is False and cls.output in ("cam", "concepts")
        e = camkit.create(name, model).explain(x, None if name == "dff" else camkit.TopK(2))
        assert e.layers == ["layer4"] and e.maps.shape == ((3, 5, 64, 64) if name == "dff" else (3, 2, 64, 64)), name
        alone = camkit.create(name, model).explain(x[1:2], None if name == "dff" else camkit.TopK(2))
        if name != "randomcam":  # random draws follow the batch
            torch.testing.assert_close(alone.maps[0], e.maps[1], atol=1e-4, rtol=0)
        if name != "dff":  # a callable target; two layers fused
            assert camkit.create(name, model).explain(x, lambda out: out[:, 3] - out[:, 5]).maps.shape == (3, 64, 64)
            two = camkit.create(name, model, layer=["layer3", "layer4"]).explain(x)
            assert two.layers == ["layer3", "layer4"] and bool(torch.isfinite(two.maps).all()), name
    assert camkit.methods.get("randomcam").baseline and camkit.methods.get("segeigencam").tasks == ("segmentation",)
    image = tmp_path / "d.png"
    viz.to_pil(digits(1, seed=5)[0].image).save(image)
    out = tmp_path / "out"
    assert main(["explain", str(image), "--model", "digits_resnet", "--weights", "random", "--method",
                 ",".join(NEW), "--target", "top2", "--threads", "1", "-o", str(out)]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"d_shapleycam_k2.png", "d_gradcam-elementwise_k1.npy", "d_dff_k5.png"} <= files  # DFF: 5 concepts


def test_smoothing_options_where_they_apply_and_a_clear_error_elsewhere():
    model = GapNet(deep_tail=True).double()
    x = _x(2, 8)
    for name in NEW:
        cls = camkit.methods.get(name)
        for option, value in (("eigen_smooth", True), ("aug_smooth", camkit.Augment(scales=(1.0,)))):
            if option in cls.smoothing:
                e = camkit.create(name, model, layer="feat", **{option: value}).explain(x, None if name == "dff" else [1, 2])
                assert bool(torch.isfinite(e.maps).all()), (name, option)
            else:
                with pytest.raises(camkit.InputError, match=option):
                    camkit.create(name, model, layer="feat", **{option: value})
    assert set(camkit.methods.get("gradcam-elementwise").smoothing) == {"aug_smooth", "eigen_smooth"}


def test_compute_is_defined_on_any_grid():
    """The formulas reduce over every grid axis: a 3-D grid (clips, volumes) gives the 2-D result of the
    same positions laid out flat."""
    g0 = torch.Generator().manual_seed(5)
    a3 = torch.rand(2, 6, 3, 4, 5, generator=g0, dtype=torch.float64)  # (B, C, D, H, W)
    g3 = torch.randn(2, 2, 6, 3, 4, 5, generator=g0, dtype=torch.float64)  # (B, K, C, D, H, W)
    a2, g2 = a3.reshape(2, 6, 12, 5), g3.reshape(2, 2, 6, 12, 5)
    torch.testing.assert_close(fem_weights(a3, 1.0), fem_weights(a2, 1.0))
    torch.testing.assert_close(kernel_pca(a3, "rbf").reshape(2, 12, 5), kernel_pca(a2, "rbf"))
    model = GapNet()
    for cls in (camkit.GradCAMElementWise, camkit.SegEigenCAM):
        m3, _ = cls(model, layer="feat").combine(a3, g3)
        m2, _ = cls(model, layer="feat").combine(a2, g2)
        assert m3.shape == (2, 2, 3, 4, 5)
        torch.testing.assert_close(m3.reshape(2, 2, 12, 5), m2)


def test_bad_options_name_the_parameter_and_the_allowed_range():
    model = GapNet(c=6)
    x = _x(1, 8).float()
    with pytest.raises(camkit.InputError, match=r"k must be between 1 and 6 .*got k=7"):
        camkit.DFF(model, layer="feat", k=7).explain(x)
    with pytest.raises(camkit.InputError, match="k must be a positive int"):
        camkit.DFF(model, layer="feat", k=0)
    with pytest.raises(camkit.InputError, match="init must be"):
        camkit.DFF(model, layer="feat", init="svd")
    with pytest.raises(camkit.TargetError, match="takes no targets|without targets"):
        camkit.DFF(model, layer="feat").explain(x, targets=1)
    with pytest.raises(camkit.InputError, match="one layer"):
        camkit.DFF(model, layer=["stem", "feat"]).explain(x)
    with pytest.raises(camkit.InputError, match=r"kernel must be one of \('sigmoid'"):
        camkit.KPCACAM(model, layer="feat", kernel="laplacian")
    with pytest.raises(camkit.InputError, match="gamma must be"):
        camkit.KPCACAM(model, layer="feat", gamma=-1.0)
    for k in (0, -2.0, float("nan")):
        with pytest.raises(camkit.InputError, match="k must be a positive number"):
            camkit.FEM(model, layer="feat", k=k)
    with pytest.raises(camkit.InputError, match="score must be 'logit'"):
        camkit.ShapleyCAM(model, layer="feat", score="softmax")
    with pytest.raises(camkit.TargetError, match="ReST scores class indices"):
        camkit.ShapleyCAM(model, layer="feat", score="rest").explain(x, targets=lambda out: out[:, 0])
    with pytest.raises(camkit.InputError, match="seed must be an int"):
        camkit.RandomCAM(model, layer="feat", seed="0")
