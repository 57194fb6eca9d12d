"""Ablation-CAM, Score-CAM, EigenCAM, Guided Backprop and Guided Grad-CAM on torchvision ResNet-50,
VGG-16 and ViT-B/16 (random init): batch of 2 (Score-CAM on the ViT: 1), TopK(2). Small inputs keep this affordable on a
2-core CPU (ResNet-50 64x64, VGG-16 32x32, ViT-B/16 built for 32x32: a 2x2 token grid).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

import camkit


def _resnet50():
    return torchvision.models.resnet50(), 64, "layer4", "layer1.0.conv1"


def _vgg16():
    return torchvision.models.vgg16(), 32, "features.29", "features.2"


def _vit_b_16():
    m = torchvision.models.vit_b_16(image_size=32)
    torch.nn.init.normal_(m.heads.head.weight, std=0.02)  # torchvision initialises the head to zero
    return m, 32, "encoder.layers.encoder_layer_11.ln_1", None


@pytest.fixture(scope="module", params=[_resnet50, _vgg16, _vit_b_16], ids=["resnet50", "vgg16", "vit_b_16"])
def arch(request):
    torch.manual_seed(0)
    model, size, layer, small_layer = request.param()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model.eval(), x, layer, small_layer


@pytest.mark.parametrize("name", ["ablationcam", "scorecam", "eigencam", "guided-backprop", "guided-gradcam"])
def test_method_on_architecture(arch, name):
    model, x, layer, small_layer = arch
    # Score-CAM costs one forward per channel: on the CNNs use an early 64-channel layer here, on
    # the ViT (768 channels in every layer) one image
    use = small_layer if name == "scorecam" and small_layer else "auto"
    if name == "scorecam" and small_layer is None:
        x = x[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Ablation-CAM's tail replay must reproduce the model
        e = camkit.create(name, model, layer=use).explain(x, targets=camkit.TopK(2))
    size = x.shape[-1]
    b = x.shape[0]
    assert e.targets.tolist() == e.logits.topk(2, 1).indices.tolist()
    assert torch.isfinite(e.maps).all()
    if e.output == "attribution":
        assert e.maps.shape == (b, 2, 3, size, size) and e.maps.abs().sum() > 0
    else:
        assert e.layers == [layer if use == "auto" else use]
        assert e.maps.shape == (b, 2, size, size)
        assert e.maps.min() >= 0 and e.maps.max() <= 1 and (e.maps.flatten(2).amax(-1) == 1).any()


def _naive_weight(model, layer, x, cls, k, tokens):
    module = model.get_submodule(layer)

    def zero(m, i, o):
        o = o.clone()
        if tokens:
            o[:, 1:, k] = 0
        else:
            o[:, k] = 0
        return o

    with torch.no_grad():
        y = model(x).gather(1, cls)
        h = module.register_forward_hook(zero)
        yk = model(x).gather(1, cls)
        h.remove()
    return (y - yk) / y.abs()


def test_ablation_tail_replay_equals_full_model(arch):
    """A few channels checked against zeroing them and rerunning the whole model (ResNet-50 also at
    ``layer4.0.conv3``, whose block adds the downsampled input computed before the layer)."""
    model, x, layer, _ = arch
    layers = [layer, "layer4.0.conv3"] if layer == "layer4" else [layer]
    for lay in layers:
        e = camkit.AblationCAM(model, lay, batch_size=256).explain(x, targets=camkit.TopK(2))
        for k in (0, 7, 300):
            ref = _naive_weight(model, lay, x, e.targets, k, tokens=lay.startswith("encoder"))
            torch.testing.assert_close(e.weights[:, :, k], ref, rtol=2e-3, atol=2e-5)
