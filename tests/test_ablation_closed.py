"""Ablation-CAM's closed form on affine tails: equal to the replay where the tail is affine in the
layer, and the replay wherever it is not -- including tails that look affine on a probe."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camkit
from camkit.methods.ablation.affine import AffineWatch, NotAffine
from camkit.data import batches, digits
from camkit.methods.ablation import closed_form as ablation_closed
from test_perturbation import naive_ablation as naive

pytestmark = pytest.mark.usefixtures("one_thread")
LOG = "camkit.methods.ablation.closed_form"


def _explain(model, layer, x, targets, caplog, **kw):
    """Closed-form (default) and replayed explanations, and whether the closed form was used."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOG), warnings.catch_warnings():
        warnings.simplefilter("error")  # neither may fall back to recompute="full"
        closed = camkit.AblationCAM(model, layer, **kw).explain(x, targets)
        used = any("closed form (the tail" in r.getMessage() for r in caplog.records)
        replay = camkit.AblationCAM(model, layer, closed_form=False, **kw).explain(x, targets)
    return closed, replay, used


def _same(closed, replay):
    scale = replay.weights.abs().max()
    assert scale > 0
    torch.testing.assert_close(closed.weights, replay.weights, rtol=1e-4, atol=1e-5 * float(scale))
    torch.testing.assert_close(closed.maps, replay.maps, rtol=1e-3, atol=1e-4)


# -- affine tails: the closed form is used and equals the replay -------------------------------------------

def test_resnet50_layer4_equals_replay(caplog):
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    closed, replay, used = _explain(model, "layer4", x, camkit.TopK(2), caplog, batch_size=256)
    assert used
    _same(closed, replay)


def test_digits_resnet_equals_replay(caplog):
    model = camkit.models.load("digits_resnet")
    x, _ = next(batches(digits(4, seed=3, split="test"), size=(64, 64), batch_size=4))
    closed, replay, used = _explain(model, "layer4", x, camkit.TopK(3), caplog)
    assert used
    _same(closed, replay)


class Head(nn.Module):
    """``feat`` (conv + BatchNorm: signed output) -> [ReLU] -> GAP -> [dropout] -> fc, float64."""

    def __init__(self, tail: str = "gap", c: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(8, c, 3, padding=1, stride=2), nn.BatchNorm2d(c))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(c, 5)
        self.fc2 = nn.Linear(5, 5)
        self.tail = tail
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(self.stem(x))
        if self.tail == "relu_first":  # DenseNet's head: relu on the layer output, then GAP + linear
            return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(F.relu(a, inplace=True), 1), 1)))
        if self.tail == "mlp":  # GAP -> fc -> relu -> fc: piecewise linear, not affine
            return self.fc2(F.relu(self.fc(a.mean((2, 3)))))
        if self.tail == "branch":  # affine on each side of a data-dependent branch
            m = a.mean((2, 3))
            return self.fc(m) if m.sum() > 0 else -self.fc(m)
        return self.fc(self.drop(a.mean((2, 3))))


def _x(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("tail", ["gap", "relu_first"])
def test_affine_tails_equal_full_recomputation(tail, caplog):
    model, x = Head(tail), _x()
    closed, replay, used = _explain(model, "feat", x, camkit.TopK(2), caplog, batch_size=4)
    assert used
    ref = naive(model, "feat", x, closed.targets).float()
    torch.testing.assert_close(closed.weights, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(replay.weights, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size,passes", [(64, [10]), (4, [4, 4, 2]), (3, [3, 3, 3, 1])])
def test_closed_form_replays_few_copies(batch_size, passes):
    """Per image: the unablated copy, 8 probe channels and the all-zero copy, at most ``batch_size``
    per pass -- instead of 1 + 12 copies per image."""
    model, x = Head("gap"), _x(2)
    sizes: list[int] = []
    model.fc.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    camkit.AblationCAM(model, "feat", batch_size=batch_size).explain(x)
    assert sizes == [2] + passes * 2


def test_tokens_with_mean_pooling_equal_replay(caplog):
    class MeanTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
            t = self.norm(torch.cat([self.cls.expand(len(t), -1, -1), t], 1))
            return self.head(t[:, 1:].mean(1) + 0.5 * t[:, 0])

    torch.manual_seed(0)
    model = MeanTokens().eval()
    x = torch.rand(2, 3, 16, 16)
    closed, replay, used = _explain(model, "norm", x, camkit.TopK(2), caplog, batch_size=5)
    assert used
    _same(closed, replay)


# -- tails that are not affine: the replay is used ----------------------------------------------------------

@pytest.mark.parametrize("tail,why", [("mlp", "relu"), ("branch", "gt")])
def test_non_affine_tails_fall_back_to_the_replay(tail, why, caplog):
    model, x = Head(tail), _x()
    closed, replay, used = _explain(model, "feat", x, None, caplog)
    assert not used
    assert any(why in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(closed.weights, replay.weights, rtol=0, atol=0)
    torch.testing.assert_close(closed.weights, naive(model, "feat", x, closed.targets[:, None])[:, 0].float(),
                               rtol=1e-5, atol=1e-6)


class Switch(nn.Module):
    """GAP -> fc, plus ``relu(1 - 100 mean(A_j))``: off at the image (``mean(A_j) > 0.01``), on once
    channel ``j`` is ablated. Affine along the ablation of every other channel, so replays of other
    channels agree with the closed form."""

    def __init__(self, j: int, through_numpy: bool) -> None:
        super().__init__()
        self.base = Head("gap", c=24)
        self.j, self.numpy = j, through_numpy

    def forward(self, x):
        a = self.base.feat(self.base.stem(x))
        m = a.mean((2, 3))
        u = 1.0 - 100.0 * m[:, self.j]
        if self.numpy:  # invisible to the op-by-op check (and to autograd)
            switch = torch.from_numpy(np.maximum(u.detach().cpu().numpy(), 0.0)).to(m)
        else:
            switch = F.relu(u)
        return self.base.fc(m) + switch[:, None]


@pytest.mark.parametrize("through_numpy", [False, True])
def test_tail_affine_on_probes_but_not_everywhere_is_caught(through_numpy, caplog):
    x, targets = _x(2), [0, 1]
    base = Head("gap", c=24)
    with torch.no_grad():
        a = base.feat(base.stem(x))
        m = a.mean((2, 3))
        d = base.fc.weight[targets] * m  # the closed form's y - y_k (the switch is off: no gradient)
    probes = {k for b in range(2) for k in ablation_closed._probes(a[b], ablation_closed.PROBES, seed=b).tolist()}
    js = [k for k in range(24) if k not in probes and (m[:, k] > 0.02).all()]
    assert js, "no channel outside the probes with the switch off in both images"
    model = Switch(js[0], through_numpy)
    closed, replay, used = _explain(model, "base.feat", x, targets, caplog)
    assert not used
    why = "relu" if not through_numpy else "differs from the closed form"  # op check / all-zero copy
    assert any(why in r.getMessage() for r in caplog.records)
    ref = naive(model, "base.feat", x, torch.tensor(targets)[:, None])[:, 0].float()
    torch.testing.assert_close(closed.weights, ref, rtol=1e-5, atol=1e-6)
    wrong = (d / model(x).detach().gather(1, torch.tensor(targets)[:, None]).abs()).float()
    assert (ref[:, js[0]] - wrong[:, js[0]]).abs().min() > 1e-2  # the closed form would be wrong on j


def test_replay_forced(caplog):
    model, x = Head("gap"), _x(2)
    with pytest.raises(camkit.InputError, match="closed_form"):
        camkit.AblationCAM(model, "feat", closed_form="yes")
    with caplog.at_level(logging.DEBUG, logger=LOG):
        camkit.AblationCAM(model, "feat", closed_form=False).explain(x)
    assert not caplog.records  # the closed form was not even tried


# -- the op-by-op check itself -------------------------------------------------------------------------

@pytest.mark.parametrize("fn,ok", [
    (lambda a, w: (a.mean((2, 3)) @ w).sum(), True),
    (lambda a, w: F.avg_pool2d(F.relu(a * 2.0), 2).flatten(1) @ w.repeat(4, 1), True),
    (lambda a, w: F.relu(a + 1.0).sum(), False),  # relu of a shifted value
    (lambda a, w: (a * a).sum(), False),  # product of two derived values
    (lambda a, w: a.amax((2, 3)).sum(), False),
    (lambda a, w: a.sum() if bool(a.sum() > 0) else -a.sum(), False),  # data-dependent branch
    (lambda a, w: F.dropout(a, 0.5, training=True).sum(), False),  # a random draw
    (lambda a, w: torch.div(a, 0.3, rounding_mode="floor").sum(), False),
    (lambda a, w: a.to(torch.int32).float().sum(), False),
    (lambda a, w: torch.where(a.detach() > 0, a, 0.0).sum(), False),  # the condition reads the values
])
def test_affine_watch(fn, ok):
    a = torch.randn(2, 4, 4, 4)
    w = torch.randn(4, 3)
    watch = AffineWatch(a)
    try:
        with watch:
            out = fn(a, w)
    except NotAffine:
        out = None
    assert watch.affine(out) is ok
    assert (watch.reason is None) is ok


def test_affine_watch_rejects_writes_into_earlier_tensors():
    a = torch.randn(2, 3)
    buf = torch.zeros(2, 3)
    watch = AffineWatch(a)
    with pytest.raises(NotAffine, match="writes"), watch:
        buf.add_(a)
