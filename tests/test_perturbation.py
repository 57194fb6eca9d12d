"""Ablation-CAM, Score-CAM and EigenCAM against naive references on small float64 models."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from camkit.core.postprocess import normalize, upsample
from camkit.methods.eigen import principal_projection


pytestmark = pytest.mark.usefixtures("one_thread")


def _init(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.double().eval()


class Block(nn.Module):
    """conv1 -> relu -> conv2 -> bn -> += shortcut(x) -> relu, one ReLU module called twice. With the
    target at ``conv2``/``bn`` the shortcut runs after the target but reads the block input; with the
    target at ``bn`` the tail adds to the target's output in place."""

    def __init__(self, cin: int, c: int, projection: bool) -> None:
        super().__init__()
        stride = 2 if projection else 1
        self.conv1 = nn.Conv2d(cin, c, 3, padding=1, stride=stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.shortcut = nn.Conv2d(cin, c, 1, stride=2) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.bn(self.conv2(out))
        out += self.shortcut(x) if self.shortcut is not None else x  # in place, as torchvision does
        return self.relu(out)


class CountingConv(nn.Conv2d):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


class SkipNet(nn.Module):
    def __init__(self, c: int = 6, n_cls: int = 5, seed: int = 0) -> None:
        super().__init__()
        self.stem = nn.Sequential(CountingConv(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.block1 = Block(4, c, projection=True)
        self.block2 = Block(c, c, projection=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_cls)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


class PlainNet(nn.Module):
    """stem -> feat (conv, ReLU) -> [mid conv + functional ReLU] -> GAP -> fc; ``dead`` channels of
    ``feat`` are all zero (a very negative bias), i.e. constant."""

    def __init__(self, c: int = 6, n_cls: int = 5, deep_tail: bool = True, dead: tuple[int, ...] = (), seed: int = 0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(4, c, 3, padding=1, stride=2), nn.ReLU())
        self.mid = nn.Conv2d(c, c, 3, padding=1) if deep_tail else None
        self.fc = nn.Linear(c, n_cls)
        _init(self, seed)
        with torch.no_grad():
            for k in dead:
                self.feat[0].bias[k] = -1e3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(self.stem(x))
        if self.mid is not None:
            a = F.relu(self.mid(a))
        return self.fc(a.mean((2, 3)))


class TokenNet(nn.Module):
    """Patch conv -> [class token] + patch tokens -> token-mixing blocks -> class-token head.
    ``seq_first`` keeps tokens as (N, B, C) between the blocks."""

    def __init__(self, dim: int = 8, patch: int = 4, n_cls: int = 5, seq_first: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.seq_first = seq_first
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.mix = nn.ModuleList(nn.Linear(17, 17) for _ in range(2))  # 1 + 4*4 tokens for 16x16 inputs
        self.mlp = nn.ModuleList(nn.Linear(dim, dim) for _ in range(2))
        self.head = nn.Linear(dim, n_cls)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        if self.seq_first:
            t = t.transpose(0, 1)
        for norm, mix, mlp in zip(self.norms, self.mix, self.mlp):
            u = norm(t)  # the explained layer: norms.1
            u = u.transpose(0, 1) if self.seq_first else u
            u = mix(u.transpose(1, 2)).transpose(1, 2)
            u = u.transpose(0, 1) if self.seq_first else u
            t = t + F.gelu(mlp(u))
        return self.head(t[0] if self.seq_first else t[:, 0])


def _x(b: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _zero_channel(out: torch.Tensor, k: int, prefix: int | None, seq_first: bool) -> torch.Tensor:
    out = out.clone()
    if out.dim() == 4:
        out[:, k] = 0
    elif seq_first:
        out[prefix:, :, k] = 0
    else:
        out[:, prefix:, k] = 0
    return out


def naive_ablation(model, layer, x, cls, prefix=None, seq_first=False) -> torch.Tensor:
    """``(y - y_k)/|y|`` with channel ``k`` zeroed by a hook and the whole model rerun: ``(B, K, C)``."""
    module = model.get_submodule(layer)
    with torch.no_grad():
        y = model(x).gather(1, cls)
        store = {}
        h = module.register_forward_hook(lambda m, i, o: store.update(a=o))
        model(x)
        h.remove()
        c = store["a"].shape[1 if store["a"].dim() == 4 else -1]
        ws = []
        for k in range(c):
            h = module.register_forward_hook(lambda m, i, o, k=k: _zero_channel(o, k, prefix, seq_first))
            yk = model(x).gather(1, cls)
            h.remove()
            ws.append((y - yk) / y.abs())
    return torch.stack(ws, dim=-1)


def _count_calls(module: nn.Module) -> list[int]:
    sizes: list[int] = []
    module.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    return sizes


# -- Ablation-CAM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["block1.conv1", "block1.conv2", "block1.bn", "block2.conv2", "block2", "stem"])
@pytest.mark.parametrize("batch_size", [2, 64])
def test_ablation_equals_full_recomputation_with_skip_connections(layer, batch_size):
    model, x = SkipNet(), _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tail replay must not fall back
        e = camkit.AblationCAM(model, layer, batch_size=batch_size).explain(x, camkit.TopK(3))
    assert model.stem[0].calls == 1  # the part before the layer ran once, in the normal pass
    ref = naive_ablation(model, layer, x, e.targets)
    torch.testing.assert_close(e.weights, ref.float(), rtol=1e-5, atol=1e-6)
    assert ref.abs().max() > 1e-3


@pytest.mark.parametrize("layer", ["feat", "feat.0"])
def test_ablation_equals_full_recomputation_without_skip(layer):
    model, x = PlainNet(), _x(3)
    e = camkit.AblationCAM(model, layer, batch_size=5).explain(x, targets=[0, 3, 4])
    ref = naive_ablation(model, layer, x, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.weights, ref.float(), rtol=1e-5, atol=1e-6)
    full = camkit.AblationCAM(model, layer, recompute="full").explain(x, targets=[0, 3, 4])
    torch.testing.assert_close(full.weights, ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.maps, full.maps)


def test_ablation_gap_linear_closed_form():
    """On GAP + linear, ``y - y_k = W[c, k] * mean(A_k)``."""
    model, x = PlainNet(deep_tail=False, dead=(2,)), _x(2)
    e = camkit.AblationCAM(model, "feat").explain(x, camkit.TopK(2))
    with torch.no_grad():
        a = model.feat(model.stem(x))
        y = model(x).gather(1, e.targets)
    w_fc = model.fc.weight[e.targets]  # (B, K, C)
    expected = w_fc * a.mean((2, 3))[:, None, :] / y.abs()[..., None]
    torch.testing.assert_close(e.weights, expected.float(), rtol=1e-5, atol=1e-7)
    assert (e.weights[:, :, 2] == 0).all()  # a dead channel changes nothing
    raw = torch.relu(torch.einsum("bkc,bchw->bkhw", e.weights, a.float()))
    torch.testing.assert_close(e.raw, raw)


def test_ablation_negative_score_divides_by_magnitude():
    model, x = PlainNet(deep_tail=False), _x(2)
    logits = model(x).detach()
    cls = logits.argmin(1)  # a negative logit
    assert (logits.gather(1, cls[:, None]) < 0).all()
    e = camkit.AblationCAM(model, "feat").explain(x, targets=cls.tolist())
    with torch.no_grad():
        a = model.feat(model.stem(x))
    expected = model.fc.weight[cls] * a.mean((2, 3))  # y - y_k: positive where the channel raises the score
    torch.testing.assert_close(e.weights * logits.gather(1, cls[:, None]).abs().float(), expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seq_first", [False, True])
def test_ablation_on_tokens_zeroes_grid_channels(seq_first):
    model, x = TokenNet(seq_first=seq_first), _x(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = camkit.AblationCAM(model, "norms.1", batch_size=3).explain(x, camkit.TopK(2))
    ref = naive_ablation(model, "norms.1", x, e.targets, prefix=1, seq_first=seq_first)
    torch.testing.assert_close(e.weights, ref.float(), rtol=1e-5, atol=1e-6)
    assert e.maps.shape == (2, 2, 16, 16)


def test_ablation_topk_shares_the_ablation_passes():
    model, x = SkipNet(), _x()
    calls = _count_calls(model.fc)
    camkit.AblationCAM(model, "block2", batch_size=4, closed_form=False).explain(x)
    n_top1 = len(calls)
    calls.clear()
    camkit.AblationCAM(model, "block2", batch_size=4, closed_form=False).explain(x, camkit.TopK(4))
    assert len(calls) == n_top1 == 1 + 2 * 2  # normal pass + per image ceil((6 + 1) / 4) passes


class InplaceGlue(nn.Module):
    """Modifies a tensor computed before the layer in place after the layer ran."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.feat = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        _init(self, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = torch.relu(self.feat(a))
        a.mul_(2)
        return self.fc((b * a).mean((2, 3)))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ablation_falls_back_when_the_forward_changes_cached_tensors(batch_size):
    model, x = InplaceGlue(), _x(2)
    with pytest.warns(RuntimeWarning, match="recompute='full'"):
        e = camkit.AblationCAM(model, "feat", batch_size=batch_size).explain(x)
    ref = naive_ablation(model, "feat", x, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.weights, ref.float(), rtol=1e-5, atol=1e-6)


def test_ablation_rejects_layer_called_twice_and_bad_options():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    for method in (camkit.AblationCAM, camkit.GradCAM, camkit.EigenCAM):  # one map per layer call, or an error
        with pytest.raises(camkit.InputError, match="called more than once"):
            method(Twice(), "conv").explain(torch.rand(1, 3, 8, 8))
    with pytest.raises(camkit.InputError, match="batch_size"):
        camkit.AblationCAM(Twice(), "conv", batch_size=0)
    with pytest.raises(camkit.InputError, match="recompute"):
        camkit.AblationCAM(Twice(), "conv", recompute="all")


# -- Score-CAM ------------------------------------------------------------------------------------------

def naive_scorecam(model, layer, x, cls, score="softmax") -> torch.Tensor:
    """One masked input at a time: ``softmax_k(s(x * norm(up(A_k))))`` -> weights ``(B, C)``."""
    store = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    with torch.no_grad():
        model(x)
    h.remove()
    a = store["a"].float()
    out = torch.zeros(x.shape[0], a.shape[1])
    with torch.no_grad():
        for b in range(x.shape[0]):
            for k in range(a.shape[1]):
                ak = a[b, k]
                mask = torch.zeros(x.shape[-2:]) if ak.max() == ak.min() else normalize(upsample(ak, x.shape[-2:]))
                logits = model(x[b:b + 1] * mask.to(x.dtype))[0].float()
                out[b, k] = (logits.softmax(-1) if score == "softmax" else logits)[cls[b]]
    return out.softmax(-1)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
@pytest.mark.parametrize("score", ["softmax", "logit"])
def test_scorecam_equals_one_channel_at_a_time(batch_size, score):
    model, x = PlainNet(c=7, dead=(1, 4)), _x(3)
    seen = _count_calls(model)
    e = camkit.ScoreCAM(model, "feat", batch_size=batch_size, score=score).explain(x, targets=[2, 0, 4])
    assert max(seen) <= max(batch_size, 3)  # 3: the normal pass of the batch
    n_masked = sum(seen) - 3
    assert n_masked == 3 * 5 + 1  # 5 non-constant channels per image, one shared all-zero input
    ref = naive_scorecam(model, "feat", x, [2, 0, 4], score)
    torch.testing.assert_close(e.weights, ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        a = model.feat(model.stem(x)).float()
    torch.testing.assert_close(e.raw, torch.relu(torch.einsum("bc,bchw->bhw", ref, a)), rtol=1e-5, atol=1e-6)


def test_scorecam_topk_and_callable_targets():
    model, x = PlainNet(c=5), _x(2)
    e = camkit.ScoreCAM(model, "feat", batch_size=4).explain(x, camkit.TopK(3))
    assert e.maps.shape == (2, 3, 16, 16) and e.weights.shape == (2, 3, 5)
    for j in range(3):
        ref = naive_scorecam(model, "feat", x, e.targets[:, j].tolist())
        torch.testing.assert_close(e.weights[:, j], ref, rtol=1e-5, atol=1e-7)
    f = camkit.ScoreCAM(model, "feat", score="logit").explain(x, targets=lambda out: out[:, 1])
    ref = naive_scorecam(model, "feat", x, [1, 1], score="logit")
    torch.testing.assert_close(f.weights, ref, rtol=1e-5, atol=1e-7)


def test_scorecam_bad_options():
    with pytest.raises(camkit.InputError, match="score"):
        camkit.ScoreCAM(PlainNet(), "feat", score="prob")
    with pytest.raises(camkit.InputError, match="batch_size"):
        camkit.ScoreCAM(PlainNet(), "feat", batch_size=-1)


# -- EigenCAM -------------------------------------------------------------------------------------------

def _hand_projection(a: np.ndarray, center: bool) -> np.ndarray:
    """First principal component projection of one ``(C, h, w)`` activation, sign by the rule."""
    c, h, w = a.shape
    m = a.reshape(c, -1).T
    if center:
        m = m - m.mean(0)
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    p = m @ vt[0]
    ref = np.abs(a).mean(0).ravel()
    if np.dot(p - p.mean(), ref - ref.mean()) < 0:
        p = -p
    return p.reshape(h, w)


@pytest.mark.parametrize("center", [True, False])
def test_eigencam_equals_hand_svd(center):
    model, x = PlainNet(c=6), _x(3)
    e = camkit.EigenCAM(model, "feat.0", center=center).explain(x, camkit.TopK(2))
    with torch.no_grad():
        a = model.feat[0](model.stem(x)).numpy()
    for b in range(3):
        ref = torch.relu(torch.from_numpy(_hand_projection(a[b], center))).float()
        for j in range(2):  # class-agnostic
            torch.testing.assert_close(e.raw[b, j], ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(e.maps[:, 0], e.maps[:, 1])


def test_eigencam_sign_is_stable_under_negated_activations():
    model, x = PlainNet(c=6), _x(3)
    flipped = PlainNet(c=6)
    with torch.no_grad():  # the target layer's output is negated by a parameter flip
        flipped.feat[0].weight.neg_()
        flipped.feat[0].bias.neg_()
    e1 = camkit.EigenCAM(model, "feat.0").explain(x)
    e2 = camkit.EigenCAM(flipped, "feat.0").explain(x)
    torch.testing.assert_close(e1.maps, e2.maps, rtol=1e-5, atol=1e-6)
    assert e1.maps.flatten(1).amax(1).eq(1).all()
    a = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    p1, v1 = principal_projection(a)
    p2, v2 = principal_projection(-a)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(v1, -v2)


def test_eigencam_sign_follows_activation_magnitude():
    """A blob of high activation in one corner: the map must peak there, not be inverted."""
    a = torch.full((1, 4, 6, 6), 0.1)
    a[0, :, :2, :2] = torch.tensor([3.0, 2.0, 1.0, 2.5])[:, None, None]
    a[0] += 0.01 * torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(0))
    p, _ = principal_projection(a)
    assert p[0, :2, :2].min() > p[0, 2:, 2:].max()


# -- every method: registry, model state -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["ablationcam", "scorecam", "eigencam", "guided-backprop", "guided-gradcam"])
def test_registry_and_model_state_restored(name):
    model, x = SkipNet(), _x()
    model.train()
    model.block1.train(False)
    model.stem[0].weight.requires_grad_(False)
    grad = torch.ones_like(model.fc.weight)
    model.fc.weight.grad = grad
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}
    modes = {n: m.training for n, m in model.named_modules()}

    def check():
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()} == hooks
        assert all("forward" not in m.__dict__ for m in model.modules())
        assert not model.stem[0].weight.requires_grad and model.block2.conv2.weight.requires_grad
        assert model.fc.weight.grad is grad and model.block2.conv2.weight.grad is None
        assert torch.equal(grad, torch.ones_like(grad))

    cam = camkit.create(name, model, layer="block2")
    e = cam.explain(x, camkit.TopK(2))
    assert e.maps.shape[:2] == (2, 2)
    check()

    def boom(out):
        if out.shape[0] > 2 or name in ("eigencam", "guided-backprop", "guided-gradcam"):
            raise ValueError("boom")
        return out[:, :1]

    with pytest.raises(ValueError, match="boom"):
        camkit.create(name, model, layer="block2").explain(x, targets=boom)
    check()


def test_ablation_skips_all_zero_channels():
    model, x = PlainNet(c=7, dead=(1, 4, 5)), _x(2)
    calls = _count_calls(model.fc)
    e = camkit.AblationCAM(model, "feat", batch_size=2).explain(x)
    assert calls == [2] + [2, 2, 1] * 2  # per image: unablated copy + 4 live channels, in batches of 2
    assert (e.weights[:, [1, 4, 5]] == 0).all() and (e.weights[:, [0, 2, 3, 6]] != 0).all()
    ref = naive_ablation(model, "feat", x, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.weights, ref.float(), rtol=1e-5, atol=1e-6)
