"""ARCC: each term and the harmonic mean against hand values on tiny models, and against
pytorch-grad-cam's ``ARCC`` with the same maps (noise 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from camkit.errors import InputError
from camkit.metrics import ARCCProtocol, arcc, coherency, complexity

EDGE, DIAG = 1 / 6, 1 / 12


class OnePixel(nn.Module):
    """logit_0 = 40 (v - 0.84) with v = channel 0 at (y, x), logit_1 = 0: p_0 = sigmoid(40 (v - 0.84))."""

    def __init__(self, y: int, x: int) -> None:
        super().__init__()
        self.y, self.x = y, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 40 * (x[:, 0, self.y, self.x] - 0.84)
        return torch.stack([v, torch.zeros_like(v)], 1)


def _image_and_map() -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(16, dtype=torch.float64)
    img = (1 - i**2 / 225).view(1, 1, 4, 4).expand(1, 3, 4, 4).clone()  # concave: a pixel > its neighbours' mean
    m = (0.5 + i * 1e-3).view(1, 4, 4).clone()
    m[0, 1, 2], m[0, 3, 0] = 1.0, 0.0
    return img, m


def test_arcc_hand_value_with_a_fixed_map():
    """A method whose map ignores its input: coherency = 1. complexity = mean of the map. One pixel
    removed (6.25 %): MoRF imputes the pixel the model reads, LeRF a pixel it ignores."""
    img, m = _image_and_map()
    v = img[0, 0]
    imputed = EDGE * (v[0, 2] + v[1, 1] + v[1, 3] + v[2, 2]) + DIAG * (v[0, 1] + v[0, 3] + v[2, 1] + v[2, 3])
    sig = lambda z: 1 / (1 + np.exp(-40 * (float(z) - 0.84)))  # noqa: E731
    road_hand = float(np.clip(2 * (sig(v[1, 2]) - sig(imputed)) / 2, 0, 1))
    comp_hand = float(m.mean())
    expected = 3 / (1 / 1 + 1 / (1 - comp_hand) + 1 / road_hand)
    res = arcc(lambda x, t: m.expand(x.shape[0], -1, -1), OnePixel(1, 2), img, 0, road_percentiles=[6.25], noise=0)
    assert road_hand > 0.05
    assert float(res.coherency[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(res.complexity[0]) == pytest.approx(comp_hand, abs=1e-6)
    assert float(res.road[0]) == pytest.approx(road_hand, abs=1e-6)
    assert float(res.arcc[0]) == pytest.approx(expected, rel=1e-5)
    assert isinstance(res.protocol, ARCCProtocol) and "harmonic" in res.protocol.describe()


def test_coherency_reruns_the_method_on_the_masked_image():
    """Method: the min-max normalised channel 0. On the image x map it returns minmax(x0 * m)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)

    def minmax(z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        return ((z - z.min(1, keepdim=True).values) / (z.max(1, keepdim=True).values - z.min(1, keepdim=True).values)).view(-1, 6, 6)

    method = lambda inp, t: minmax(inp[:, 0])  # noqa: E731
    m = minmax(x[:, 0])
    again = minmax(x[:, 0] * m)
    hand = [(np.corrcoef(m[i].flatten(), again[i].flatten())[0, 1] + 1) / 2 for i in range(2)]
    got = coherency(method, x, m, torch.zeros(2, dtype=torch.long))
    np.testing.assert_allclose(got.numpy(), hand, rtol=1e-5)
    assert float(got.min()) < 0.999  # the masked map differs: the test can tell


def test_complexity_is_the_mean_and_refuses_unnormalised_maps():
    m = torch.zeros(1, 4, 4)
    m[0, :2] = 1
    assert float(complexity(m)[0]) == pytest.approx(0.5)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        complexity(m * 3)


def test_a_method_returning_the_wrong_shape_is_refused():
    img, m = _image_and_map()
    with pytest.raises(InputError, match=r"one \(H, W\) map per image"):
        arcc(lambda x, t: m[0], OnePixel(1, 2), img, 0, road_percentiles=[50])


def test_arcc_with_a_camkit_method_matches_pytorch_grad_cam(monkeypatch):
    road_pgc = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.metrics.arcc import ARCC as PgcARCC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    init = road_pgc.NoisyLinearImputer.__init__
    monkeypatch.setattr(road_pgc.NoisyLinearImputer, "__init__", lambda self, noise=0.0, weighting=None: init(self, 0.0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(20)
    method = camkit.GradCAM(model, layer="2")
    x = torch.rand(1, 3, 32, 32)  # 32 x 32: pgc's percentile thresholds remove round(p% x 1024) pixels too
    top1 = model(x).argmax(1)
    ours = arcc(method, model, x, noise=0)

    class Wrapped:  # pgc calls base_method(input_tensor=..., targets=[...]) and expects numpy maps
        def __call__(self, input_tensor, targets):
            return method(input_tensor, top1).detach().numpy()

    maps = method(x, top1).detach().numpy()
    ref = PgcARCC(Wrapped())(x, maps, [ClassifierOutputSoftmaxTarget(int(c)) for c in top1], model)
    np.testing.assert_allclose(ours.arcc.numpy(), ref, atol=1e-4)
