"""ROAD: the noisy linear imputation against a dense hand solve, the curves against hand values and
against pytorch-grad-cam's ROAD (noise 0) on a small model at 32x32."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camkit.errors import InputError
from camkit.metrics import ROADProtocol, noisy_linear_imputation, road

EDGE, DIAG = 1 / 6, 1 / 12


def dense_imputation(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Each removed pixel = the weighted mean of its in-image 8 neighbours (the removed ones unknown):
    one dense system written pixel by pixel, solved with numpy."""
    c, h, w = img.shape
    where = list(zip(*np.nonzero(removed)))
    idx = {p: i for i, p in enumerate(where)}
    a = np.zeros((len(where), len(where)))
    b = np.zeros((len(where), c))
    for (y, x), i in idx.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= ny < h and 0 <= nx < w):
                    continue
                wt = DIAG if dy and dx else EDGE
                a[i, i] += wt
                if removed[ny, nx]:
                    a[i, idx[(ny, nx)]] -= wt
                else:
                    b[i] += wt * img[:, ny, nx]
    sol = np.linalg.solve(a, b)
    out = img.copy()
    for (y, x), i in idx.items():
        out[:, y, x] = sol[i]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_imputation_matches_dense_hand_solve_on_5x5(seed):
    rng = np.random.default_rng(seed)
    img = rng.random((2, 3, 5, 5))
    removed = rng.random((2, 5, 5)) < 0.6
    removed[:, 0, 0] = True  # a corner (3 neighbours) and an edge pixel are always imputed
    removed[:, 2, 4] = True
    removed[1, 3, 3] = False
    out = noisy_linear_imputation(torch.tensor(img), torch.tensor(removed), noise=0)
    assert out.dtype == torch.float64
    for i in range(2):
        np.testing.assert_allclose(out[i].numpy(), dense_imputation(img[i], removed[i]), atol=1e-12)


def test_imputation_noise_is_seeded_and_only_on_removed_pixels():
    img = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    removed = torch.zeros(1, 16, 16, dtype=torch.bool)
    removed[0, 4:12, 4:12] = True
    clean = noisy_linear_imputation(img, removed, noise=0)
    a = noisy_linear_imputation(img, removed, noise=0.5, generator=torch.Generator().manual_seed(3))
    b = noisy_linear_imputation(img, removed, noise=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, ~removed[0]], img[:, :, ~removed[0]])
    d = (a - clean)[:, :, removed[0]]
    assert 0.4 < float(d.std()) < 0.6  # 192 draws of N(0, 0.5^2)


def test_constant_image_is_imputed_exactly():
    img = torch.full((1, 3, 8, 8), 0.25, dtype=torch.float64)
    removed = torch.rand(1, 8, 8) < 0.8
    removed[0, 0, 0] = False
    assert torch.allclose(noisy_linear_imputation(img, removed, noise=0), img, atol=1e-14)


class OnePixel(nn.Module):
    """logit_0 = channel 0 at pixel (y, x), logit_1 = 0: ROAD's scores are then imputed values."""

    def __init__(self, y: int, x: int) -> None:
        super().__init__()
        self.y, self.x = y, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, self.y, self.x]
        return torch.stack([v, torch.zeros_like(v)], 1)


def test_morf_and_lerf_hand_values():
    """4x4 image, one pixel removed (6.25 %): MoRF removes the map's maximum at (1, 2), which the model
    reads; its imputed value is the weighted mean of its 8 neighbours. LeRF removes the minimum at
    (3, 0), which the model does not read. combined = (LeRF - MoRF) / 2."""
    img = (torch.arange(16, dtype=torch.float64) ** 2 / 225).view(1, 1, 4, 4).expand(1, 3, 4, 4).clone()
    m = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    m[0, 1, 2], m[0, 3, 0] = 1.0, 0.0
    m[0] += torch.arange(16, dtype=torch.float64).view(4, 4) * 1e-3  # no ties
    m[0, 1, 2], m[0, 3, 0] = 1.0, 0.0
    v = img[0, 0]
    hand = (EDGE * (v[0, 2] + v[1, 1] + v[1, 3] + v[2, 2]) + DIAG * (v[0, 1] + v[0, 3] + v[2, 1] + v[2, 3]))
    res = road(OnePixel(1, 2), img, m, 0, percentiles=[6.25], noise=0, score="logit")
    assert float(res.morf[0, 0]) == pytest.approx(float(hand), abs=1e-6)
    assert float(res.lerf[0, 0]) == pytest.approx(float(v[1, 2]), abs=1e-6)
    assert float(res.base[0]) == pytest.approx(float(v[1, 2]), abs=1e-6)
    assert float(res.combined[0]) == pytest.approx(float(v[1, 2] - hand) / 2, abs=1e-6)


def test_protocol_is_printed_with_percentiles_and_seed():
    img = torch.rand(2, 3, 8, 8)
    res = road(OnePixel(0, 0), img, torch.rand(2, 8, 8), percentiles=[25, 50], seed=7)
    assert isinstance(res.protocol, ROADProtocol)
    text = res.protocol.describe()
    assert "ROAD" in text and "percentiles=(25.0, 50.0)" in text and "seed=7" in text and "Rong" in text
    assert res.morf.shape == res.lerf.shape == (2, 2)
    again = road(OnePixel(0, 0), img, torch.rand(2, 8, 8), percentiles=[25, 50], seed=7)
    assert torch.equal(res.base, again.base)


@pytest.mark.parametrize("bad", [[0, 50], [50, 100], [-10], [150], [], ["x"]])
def test_percentiles_outside_open_range_are_refused(bad):
    with pytest.raises(InputError, match=r"percentiles.*\(0, 100\)"):
        road(OnePixel(0, 0), torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), percentiles=bad)


def test_bad_masks_and_noise_are_refused():
    img = torch.rand(1, 3, 4, 4)
    with pytest.raises(InputError, match="every pixel removed"):
        noisy_linear_imputation(img, torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(InputError, match=r"removed must be a \(B, H, W\)"):
        noisy_linear_imputation(img, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="noise must be >= 0"):
        noisy_linear_imputation(img, torch.zeros(1, 4, 4, dtype=torch.bool), noise=-1)


# ------------------------------------------------------------------ pytorch-grad-cam


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    with torch.no_grad():
        net[-1].weight.mul_(20)  # scores that move visibly with the imputed values
    return net


def test_imputation_matches_pytorch_grad_cam(monkeypatch):
    road_pgc = pytest.importorskip("pytorch_grad_cam.metrics.road")
    torch.manual_seed(1)
    img = torch.rand(3, 32, 32)
    keep = (torch.rand(32, 32) > 0.7).float()  # pgc's mask: 1 = kept
    ref = road_pgc.NoisyLinearImputer(noise=0)(img, keep)
    ours = noisy_linear_imputation(img[None], (keep == 0)[None], noise=0)[0]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_road_combined_matches_pytorch_grad_cam(monkeypatch):
    """Same imputation (noise 0), same removed pixels: at 32x32 (1024 pixels) pgc's percentile
    threshold removes round(p% x 1024) pixels for p = 20..80 (checked), as camkit does."""
    road_pgc = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    init = road_pgc.NoisyLinearImputer.__init__
    monkeypatch.setattr(road_pgc.NoisyLinearImputer, "__init__", lambda self, noise=0.0, weighting=None: init(self, 0.0))
    model = _tiny_cnn()
    torch.manual_seed(2)
    x = torch.rand(2, 3, 32, 32)
    cams = torch.rand(2, 32, 32)
    pcts = [20, 40, 60, 80]
    for p in pcts:  # pgc keeps the map values below its (100 - p)-th percentile (MoRF)
        for cam in cams.numpy():
            kept = int((cam < np.percentile(cam, 100 - p)).sum())
            assert 1024 - kept == round(p / 100 * 1024)
    targets = [ClassifierOutputTarget(int(c)) for c in model(x).argmax(1)]
    ref = road_pgc.ROADCombined(percentiles=pcts)(x, cams.numpy(), targets, model)
    ours = road(model, x, cams, percentiles=pcts, noise=0, score="logit")
    np.testing.assert_allclose(ours.combined.numpy(), ref, atol=1e-5)
    morf = road_pgc.ROADMostRelevantFirst(percentile=100 - 40)(x, cams.numpy(), targets, model, return_diff=False)
    np.testing.assert_allclose(ours.morf[:, 1].numpy(), morf, atol=1e-5)
