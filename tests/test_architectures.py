"""Every method on torchvision ResNet-50, VGG-16 and ViT-B/16 (random init): batch of 2, TopK(3), auto layer.

The engine's gradients (autograd recorded only after the target layer) are compared with a plain
full-model backward through a hook on the same layer.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

import camkit

METHODS = ["gradcam", "gradcam++", "smoothgradcam++", "xgradcam", "layercam", "hirescam", "cam"]
OPTIONS = {"smoothgradcam++": {"n": 2}}


def _resnet50():
    return torchvision.models.resnet50(), "layer4"


def _vgg16():
    return torchvision.models.vgg16(), "features.29"


def _vit_b_16():
    m = torchvision.models.vit_b_16()
    torch.nn.init.normal_(m.heads.head.weight, std=0.02)  # torchvision initialises the head to zero
    return m, "encoder.layers.encoder_layer_11.ln_1"


@pytest.fixture(scope="module", params=[_resnet50, _vgg16, _vit_b_16], ids=["resnet50", "vgg16", "vit_b_16"])
def arch(request):
    torch.manual_seed(0)
    model, layer = request.param()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model.eval(), layer, x


def _reference_gradcam_weights(model, layer, x, cls):
    """Grad-CAM weights the conventional way: full forward with autograd, full backward."""
    store = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    x = x.clone().requires_grad_(True)
    logits = model(x)
    h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, cls).sum(), store["a"])
    if g.dim() == 3:  # ViT tokens: drop the class token, 14 x 14 grid
        g = g[:, 1:].reshape(g.shape[0], 14, 14, -1).permute(0, 3, 1, 2)
    return g.mean((2, 3))


@pytest.mark.parametrize("name", METHODS)
def test_every_method_batch2_topk3_auto_layer(arch, name):
    model, layer, x = arch
    cam = camkit.create(name, model, layer="auto", **OPTIONS.get(name, {}))
    if name == "cam" and layer != "layer4":
        with pytest.raises(camkit.UnsupportedModelError):
            cam.explain(x, targets=camkit.TopK(3))
        return
    e = cam.explain(x, targets=camkit.TopK(3))
    assert e.layers == [layer]
    assert e.maps.shape == (2, 3, 224, 224) and e.maps.dtype == torch.float32
    assert torch.isfinite(e.maps).all() and e.maps.min() >= 0 and e.maps.max() <= 1
    peak = e.maps.flatten(2).amax(-1)
    assert ((peak == 1) | (peak == 0)).all() and (peak == 1).any()  # normalised; all-zero only after ReLU
    assert e.targets.tolist() == e.logits.topk(3, 1).indices.tolist()


def test_engine_gradients_equal_full_backward(arch):
    model, layer, x = arch
    e = camkit.GradCAM(model).explain(x, targets=camkit.TopK(3))
    ref = _reference_gradcam_weights(model, layer, x, e.targets[:, 1:2])
    torch.testing.assert_close(e.weights[:, 1], ref, rtol=1e-3, atol=1e-6)
