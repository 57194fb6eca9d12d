"""FullGrad and EigenGrad-CAM against hand computations in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camkit
from camkit.core.postprocess import normalize, upsample
from toy_models import GapNet


class BiasNet(nn.Module):
    """conv (bias) -> BN (eval, non-trivial statistics) -> ReLU -> strided conv (bias) -> ReLU -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, stride=2)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)
            self.bn.running_mean.copy_(torch.randn(4, generator=g) * 0.3)
            self.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(a)).mean((2, 3)))


def _psi(t: torch.Tensor) -> torch.Tensor:
    """The paper's post-processing of one term (C, h, w): |t|, rescaled to [0, 1] over all of it, channel sum."""
    a = t.abs()
    span = a.max() - a.min()
    return ((a - a.min()) / span if span > 0 else torch.zeros_like(a)).sum(0)


def _hand_fullgrad(net: BiasNet, x: torch.Tensor, b: int, c: int) -> tuple[torch.Tensor, float]:
    """FullGrad map of image b, class c, written out layer by layer; also the completeness residual."""
    xi = x[b:b + 1].clone().requires_grad_(True)
    z1 = net.conv1(xi)
    z2 = net.bn(z1)
    z3 = net.conv2(F.relu(z2))
    logit = net.fc(F.relu(z3).mean((2, 3)))[0, c]
    gx, g1, g2, g3 = torch.autograd.grad(logit, [xi, z1, z2, z3])
    bn = net.bn
    bn_bias = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    terms = [gx[0] * xi[0], g1[0] * net.conv1.bias.view(-1, 1, 1), g2[0] * bn_bias.view(-1, 1, 1),
             g3[0] * net.conv2.bias.view(-1, 1, 1)]
    residual = float((sum(t.sum() for t in terms) + net.fc.bias[c] - logit).detach())  # the decomposition is exact
    size = x.shape[-2:]
    total = sum(upsample(_psi(t.detach())[None], size)[0] for t in terms)
    return normalize(total), residual


def test_fullgrad_equals_the_papers_sum_of_input_and_bias_gradient_terms():
    net = BiasNet()
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e = camkit.FullGrad(net).explain(x, targets=camkit.TopK(2))
    assert e.maps.shape == (2, 2, 10, 12) and e.layers == ["conv1", "bn", "conv2"]
    for b in range(2):
        for k in range(2):
            ref, residual = _hand_fullgrad(net, x, b, int(e.targets[b, k]))
            assert abs(residual) < 1e-10  # completeness: the hand terms (BN's effective bias included) are right
            torch.testing.assert_close(e.maps[b, k], ref.float(), atol=1e-5, rtol=0)
    # a named layer keeps only the biased layers inside it; a layer without any is refused
    assert camkit.FullGrad(net, layer="conv2").explain(x).layers == ["conv2"]
    with pytest.raises(camkit.UnsupportedModelError, match="biases"):
        camkit.FullGrad(net, layer="fc")(x)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0"])
def test_fullgrad_auto_on_squeeze_excitation_nets_sums_every_biased_layer(arch, one_thread):
    """The squeeze-excitation gates' 1×1 convolutions act on a pooled 1×1 map: their terms are constants
    over the image, summed like every other term (pytorch-grad-cam resizes them too)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=7).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    e = camkit.FullGrad(net).explain(x)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) or
              (isinstance(m, nn.Conv2d) and m.bias is not None)}
    assert e.layers == list(layers) and any(".fc1" in n for n in layers)  # the gates' convolutions included
    outs = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.update({n: o})) for n, m in layers.items()]
    xi = x.clone().requires_grad_(True)
    score = net(xi)[0, int(e.targets[0])]
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(score, [xi] + list(outs.values()))
    terms = [grads[0][0] * xi[0]]
    for g, (n, m) in zip(grads[1:], layers.items()):
        bias = m.bias if isinstance(m, nn.Conv2d) else m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
        terms.append(g[0] * bias.view(-1, 1, 1))
    total = sum(upsample(_psi(t.detach())[None], x.shape[-2:])[0] for t in terms)
    torch.testing.assert_close(e.maps[0], normalize(total), atol=1e-4, rtol=0)


def test_fullgrad_leaves_the_model_as_found_and_refuses_eigen_smooth():
    net = BiasNet().train()
    net.conv1.weight.grad = torch.ones_like(net.conv1.weight)
    camkit.FullGrad(net)(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    assert net.training and net.bn.training and torch.equal(net.conv1.weight.grad, torch.ones_like(net.conv1.weight))
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(camkit.InputError, match="eigen_smooth"):
        camkit.FullGrad(net, eigen_smooth=True)


def test_eigengradcam_is_the_signed_first_component_of_gradient_times_activation():
    model = GapNet(deep_tail=True).double()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cls = torch.tensor([0, 3])
    e = camkit.EigenGradCAM(model, layer="feat").explain(x, targets=cls.tolist())
    a = model.feat(model.stem(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.tail(a).gather(1, cls.view(-1, 1)).sum(), a)
    for b in range(2):
        z = (g[b] * a[b]).detach().numpy()  # (C, h, w)
        m = z.reshape(z.shape[0], -1).T
        m = m - m.mean(0)
        v = np.linalg.svd(m, full_matrices=False)[2][0]
        proj = m @ v
        ref = z.sum(0).ravel()
        if np.dot(proj - proj.mean(), ref - ref.mean()) < 0:
            proj = -proj
        expect = normalize(upsample(torch.relu(torch.from_numpy(proj.reshape(z.shape[1:]))).float(), x.shape[-2:]))
        torch.testing.assert_close(e.maps[b], expect, atol=1e-5, rtol=0)
    same = camkit.HiResCAM(model, layer="feat", eigen_smooth=True).explain(x, targets=cls.tolist())
    torch.testing.assert_close(same.maps, e.maps)
