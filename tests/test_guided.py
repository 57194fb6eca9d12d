"""Guided Backprop and Guided Grad-CAM against an explicit float64 reference of the guided rule."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from camkit.methods.guided import GuidedReLUMode


pytestmark = pytest.mark.usefixtures("one_thread")


class ReluNet(nn.Module):
    """conv -> nn.ReLU -> conv -> F.relu -> conv -> in-place ReLU (``kind``) -> flatten -> linear.

    ``kind``: "module" (nn.ReLU(inplace=True)), "tensor" (``Tensor.relu_``), "torch" (``torch.relu``),
    "relu6" (nn.ReLU6, clipped at 6). The pre-activations are exposed for the reference."""

    def __init__(self, kind: str = "module", seed: int = 0) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 5, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(5, 4, 3, padding=1)
        self.r3 = nn.ReLU6() if kind == "relu6" else nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.kind = kind
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if kind == "relu6":  # some pre-activations above 6, some between 0 and 6
                self.c3.weight.mul_(4)
        self.double().eval()

    def act3(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "tensor":
            return z.relu_()
        if self.kind == "torch":
            return torch.relu(z)
        return self.r3(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = self.r1(self.c1(x))
        a2 = F.relu(self.c2(a1))
        a3 = self.act3(self.c3(a2))
        return self.fc(a3.flatten(1))


def guided_reference(model: ReluNet, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The guided rule by hand: VJPs of the linear layers alone, and between them the gradient kept
    only where the ReLU's input was > 0 (and < 6 for ReLU6) AND the gradient is > 0."""
    upper = 6.0 if model.kind == "relu6" else None
    with torch.no_grad():
        z1 = model.c1(x)
        a1 = z1.clamp_min(0)
        z2 = model.c2(a1)
        a2 = z2.clamp_min(0)
        z3 = model.c3(a2)
        a3 = z3.clamp(0, upper)

    def vjp(f, inp, g):
        inp = inp.detach().requires_grad_(True)
        (out,) = torch.autograd.grad(f(inp), inp, g)
        return out

    def mask(z, g, hi=None):
        keep = (z > 0) & (g > 0)
        if hi is not None:
            keep &= z < hi
        return g * keep

    g = F.one_hot(cls, 6).double()
    g = vjp(lambda t: model.fc(t.flatten(1)), a3, g)
    g = vjp(model.c3, a2, mask(z3, g, upper))
    g = vjp(model.c2, a1, mask(z2, g))
    return vjp(model.c1, x, mask(z1, g))


def _x(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["module", "tensor", "torch", "relu6"])
def test_guided_backprop_equals_hand_rule(kind):
    model, x = ReluNet(kind), _x()
    e = camkit.GuidedBackprop(model).explain(x, targets=[0, 2, 5])
    assert e.maps.shape == (3, 3, 8, 8) and e.layers == [] and e.targets.tolist() == [0, 2, 5]
    ref = guided_reference(model, x, torch.tensor([0, 2, 5]))
    torch.testing.assert_close(e.maps, ref, rtol=1e-10, atol=1e-12)
    plain = torch.autograd.functional.vjp(lambda t: model(t), x, F.one_hot(torch.tensor([0, 2, 5]), 6).double())[1]
    assert not torch.allclose(e.maps, plain)  # the rule did change something
    if kind == "relu6":
        with torch.no_grad():
            z3 = model.c3(F.relu(model.c2(F.relu(model.c1(x)))))
        assert (z3 > 6).any() and (z3 < 0).any()  # both clips are exercised


def test_guided_backprop_batch_equals_per_image_and_topk():
    model, x = ReluNet(), _x(4)
    e = camkit.GuidedBackprop(model).explain(x, camkit.TopK(3))
    assert e.maps.shape == (4, 3, 3, 8, 8)
    for b in range(4):
        single = camkit.GuidedBackprop(model).explain(x[b:b + 1], camkit.TopK(3))
        assert single.targets.tolist() == e.targets[b:b + 1].tolist()
        torch.testing.assert_close(single.maps[0], e.maps[b], rtol=1e-10, atol=1e-12)
        for j in range(3):
            ref = guided_reference(model, x[b:b + 1], e.targets[b:b + 1, j])
            torch.testing.assert_close(e.maps[b, j], ref[0], rtol=1e-10, atol=1e-12)


def test_guided_mode_catches_every_relu_form_and_leaves_others():
    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    g = torch.linspace(-1, 1, 10, dtype=torch.float64)
    forms = [
        lambda t: F.relu(t), lambda t: F.relu(t.clone(), inplace=True), lambda t: torch.relu(t),
        lambda t: t.relu(), lambda t: t.clone().relu_(), lambda t: torch.relu_(t.clone()),
        lambda t: nn.ReLU()(t), lambda t: nn.ReLU(inplace=True)(t.clone()), lambda t: F.relu_(t.clone()),
    ]
    expected = g * (x > 0) * (g > 0)
    for f in forms:
        with GuidedReLUMode():
            y = f(x)
        torch.testing.assert_close(y, x.clamp_min(0))
        (gx,) = torch.autograd.grad(y, x, g)
        torch.testing.assert_close(gx, expected)
    with GuidedReLUMode():  # hardtanh not anchored at 0 and GELU are untouched
        y = F.hardtanh(x) + F.gelu(x)
    (gx,) = torch.autograd.grad(y, x, g)
    (ref,) = torch.autograd.grad(F.hardtanh(x) + F.gelu(x), x, g)
    torch.testing.assert_close(gx, ref)


def test_guided_gradcam_is_guided_backprop_times_gradcam():
    model, x = ReluNet(), _x(2)
    e = camkit.GuidedGradCAM(model, layer="c3").explain(x, camkit.TopK(2))
    gb = camkit.GuidedBackprop(model).explain(x, camkit.TopK(2))
    cam = camkit.GradCAM(model, layer="c3").explain(x, camkit.TopK(2))
    assert e.maps.shape == (2, 2, 3, 8, 8) and e.layers == ["c3"]
    assert torch.equal(e.targets, gb.targets)
    torch.testing.assert_close(e.maps, gb.maps * cam.maps[:, :, None].double())

    def product(targets):
        gb = camkit.GuidedBackprop(model).explain(x, targets).maps
        return gb * camkit.GradCAM(model, "c3").explain(x, targets).maps[:, None].double()

    one = camkit.create("guided-gradcam", model, layer="c3").explain(x, targets=[1, 4])
    assert one.maps.shape == (2, 3, 8, 8)
    torch.testing.assert_close(one.maps, product([1, 4]))
    f = camkit.GuidedGradCAM(model, layer="c3").explain(x, targets=lambda out: out[:, 3])
    torch.testing.assert_close(f.maps, product([3, 3]))


def test_to_image():
    attr = torch.randn(2, 4, 3, 8, 8)
    img = camkit.to_image(attr)
    assert img.shape == attr.shape and img.min() >= 0 and img.max() <= 1
    z = (attr[1, 2] - attr[1, 2].mean()) / attr[1, 2].std()
    torch.testing.assert_close(img[1, 2], (z * 0.1 + 0.5).clamp(0, 1))
    assert torch.equal(camkit.to_image(torch.zeros(3, 4, 4)), torch.full((3, 4, 4), 0.5))


def test_guided_backprop_under_no_grad_and_state():
    model, x = ReluNet(), _x(2)
    flags = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():
        e = camkit.GuidedBackprop(model).explain(x)
    assert e.maps.abs().sum() > 0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert F.relu is torch.nn.functional.relu and not torch._C._is_torch_function_mode_enabled()


@pytest.mark.parametrize("name", ["guided-backprop", "guided-gradcam"])
def test_float32_batched_attributions_within_the_stated_bound_of_alone(name):
    """README's bound for the served (batched) answers: guided attributions are not normalised, so a
    batch may differ from the image alone by 1e-4 of the image's largest |attribution| (float32 kernels
    sum in another order for another batch size; measured: about 1e-6 of it,
    benchmarks/bench_batch_agreement.py)."""
    from camkit.data import batches, digits

    model = camkit.models.load("digits_resnet")
    x, _ = next(batches(digits(4, seed=3, split="test"), size=(64, 64), batch_size=4))
    method = camkit.create(name, model)
    for target in (None, camkit.TopK(3)):
        batched = method(x, target)
        alone = torch.cat([method(x[i:i + 1], target) for i in range(len(x))])
        dims = tuple(range(1, alone.dim()))
        assert alone.abs().amax(dims).min() > 0
        assert ((batched - alone).abs().amax(dims) <= 1e-4 * alone.abs().amax(dims)).all()
