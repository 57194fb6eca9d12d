"""Sanity check (parameter randomisation), map similarity and baseline maps."""
from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from camkit.errors import InputError
from camkit.metrics import (
    BASELINES,
    RandomizationProtocol,
    baseline_maps,
    box_from_map,
    center_gaussian_map,
    default_randomization_layers,
    random_map,
    randomization_test,
    reinitialize_,
    spearman_correlation,
    ssim,
    uniform_map,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.feat(self.stem(x))).flatten(1))


def _minmax(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return (m - lo) / (hi - lo).clamp(min=1e-12)


def gradient_x_input(model: nn.Module):
    def explain(x: torch.Tensor, targets: list[int]) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        out = model(x)
        (g,) = torch.autograd.grad(out[torch.arange(len(targets)), targets].sum(), x)
        return _minmax((g * x).abs().sum(1))

    return explain


def sobel_edges(model: nn.Module):  # ignores the model: must pass as "not model dependent"
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])

    def explain(x: torch.Tensor, targets: list[int]) -> torch.Tensor:
        gray = x.mean(1, keepdim=True)
        gx = nn.functional.conv2d(gray, kx.view(1, 1, 3, 3), padding=1)
        gy = nn.functional.conv2d(gray, kx.t().reshape(1, 1, 3, 3), padding=1)
        return _minmax((gx**2 + gy**2).sqrt().squeeze(1))

    return explain


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_gradient_maps_decorrelate_edge_maps_do_not(images):
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    grad = randomization_test(gradient_x_input, model, images)
    assert grad.layers == ("fc", "feat.0", "stem.1", "stem.0")
    assert grad.spearman.shape == grad.ssim.shape == (4, 4)
    assert bool((grad.spearman.mean(1) < 0.6).all())  # every step moves the ranking (measured: ~0.3-0.4)
    edges = randomization_test(sobel_edges, model, images)
    assert torch.allclose(edges.spearman, torch.ones(4, 4))
    assert torch.allclose(edges.ssim, torch.ones(4, 4), atol=1e-5)
    # the user's model is untouched: weights, buffers and train flag
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert [r["layer"] for r in grad.summary()] == list(grad.layers)


def test_randomization_is_deterministic_and_independent_mode(images):
    model = Net()
    a = randomization_test(gradient_x_input, model, images, [0, 1, 2, 3], seed=5, keep_maps=True)
    b = randomization_test(gradient_x_input, model, images, [0, 1, 2, 3], seed=5)
    assert torch.equal(a.spearman, b.spearman)
    assert a.maps is not None and a.maps.shape == (4, 4, 16, 16)
    ind = randomization_test(gradient_x_input, model, images, layers=["stem.0"], cascade=False)
    assert ind.layers == ("stem.0",) and ind.protocol.cascade is False
    with pytest.raises(InputError, match="unknown layer"):
        randomization_test(gradient_x_input, model, images, layers=["nope"])


def test_reinitialize_changes_only_that_module():
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialize_(model.fc, seed=1)
    after = model.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert torch.equal(before["feat.0.weight"], after["feat.0.weight"])
    other = Net()
    reinitialize_(other.fc, seed=1)
    assert torch.equal(other.fc.weight, model.fc.weight)  # seeded


def test_randomization_with_the_real_gradcam(images):
    camkit = pytest.importorskip("camkit")
    if not hasattr(camkit, "create"):
        pytest.skip("method API not available")
    model = Net()
    res = randomization_test(lambda m: camkit.create("gradcam", m, layer="feat"), model, images)
    assert res.spearman.shape == (4, 4)
    assert bool(torch.isfinite(res.spearman).all()) and bool(torch.isfinite(res.ssim).all())
    assert res.spearman[-1].mean() < 0.9
    assert "Adebayo" in res.protocol.describe()


def test_default_layers_open_sequentials_output_side_first():
    vgg_like = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), nn.Flatten(), nn.Linear(4, 2)
    )
    assert default_randomization_layers(vgg_like) == ["2", "0.2", "0.0"]
    with pytest.raises(InputError):
        default_randomization_layers(nn.ReLU())


# ------------------------------------------------------------------ similarity


def test_spearman_matches_scipy_with_ties_and_handles_constants():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 6, 7), generator=g).float()  # many ties
    b = a + torch.randint(0, 3, (3, 6, 7), generator=g).float()
    ours = spearman_correlation(a, b)
    ref = [stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(3)]
    assert ours.tolist() == pytest.approx(ref, abs=1e-6)
    assert spearman_correlation(a[0], -a[0]).item() == pytest.approx(-1.0)
    assert spearman_correlation(torch.zeros(4, 4), torch.ones(4, 4)).item() == 1.0
    assert spearman_correlation(torch.zeros(4, 4), a[0, :4, :4]).item() == 0.0
    with pytest.raises(InputError, match="same shape"):
        spearman_correlation(torch.zeros(4, 4), torch.zeros(4, 5))


def test_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 20, 20, generator=g)
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # constants c1, c2: no variance, so SSIM = (2 c1 c2 + C1) / (c1² + c2² + C1), C1 = 0.01²
    c1, c2, C1 = 0.2, 0.6, 1e-4
    want = (2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1)
    assert ssim(torch.full((9, 9), c1), torch.full((9, 9), c2)).item() == pytest.approx(want, rel=1e-5)
    assert ssim(a[0], 1 - a[0]).item() < 0  # anti-correlated structure
    assert ssim(torch.rand(4, 4), torch.rand(4, 4)).shape == ()  # window shrinks to fit


# ------------------------------------------------------------------ baselines


def test_baselines_shapes_ranges_and_behaviour():
    for name in BASELINES:
        m = baseline_maps(name, (2, 10, 14), generator=torch.Generator().manual_seed(0))
        assert m.shape == (2, 10, 14) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert torch.equal(uniform_map((3, 4)), torch.ones(3, 4))
    c = center_gaussian_map((11, 11))
    assert c[5, 5] == 1.0 and c[0, 0] < c[5, 0] < c[5, 5] and torch.allclose(c, c.t())
    r1 = random_map((5, 5), generator=torch.Generator().manual_seed(3))
    r2 = random_map((5, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2)
    assert box_from_map(uniform_map((6, 8))).tolist() == [0, 0, 8, 6]  # uniform: the whole image
    with pytest.raises(InputError, match="unknown baseline"):
        baseline_maps("checkerboard", (4, 4))
    with pytest.raises(InputError):
        uniform_map((4,))


def test_protocol_record():
    p = RandomizationProtocol(layers=("fc",))
    assert p.as_dict()["layers"] == ("fc",) and "cascade=True" in p.describe()
