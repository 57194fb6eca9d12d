"""The bundled digits models: ≥ 95% top-1 on held-out generated digits, CAM-friendly structure, small files."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import camkit.models as cm
from camkit.layers.layout import patch_size, readings
from camkit.data import batches, digits
from camkit.models.zoo import WEIGHTS_DIR

DIGITS_MODELS = ["digits_resnet", "digits_vgg", "digits_vit"]


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    # other source digits (odd load_digits indices) and a seed the training never used
    images, chunk = next(batches(digits(300, seed=424242, split="test"), size=(64, 64), batch_size=300))
    return images, torch.tensor([s.label for s in chunk])


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_bundled_digits_model_is_accurate_on_held_out_digits(name: str, held_out) -> None:  # noqa: ANN001
    model = cm.load(name)
    images, labels = held_out
    with torch.no_grad():
        acc = (model(images).argmax(1) == labels).float().mean().item()
    assert acc >= 0.95, f"{name}: held-out top-1 {acc:.3f}"


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_bundled_weights_are_small(name: str) -> None:
    assert (WEIGHTS_DIR / f"{name}.pt").stat().st_size < 1_000_000


def test_digits_models_have_cam_friendly_structure() -> None:
    x = torch.rand(2, 3, 64, 64)
    res = cm.load("digits_resnet", weights=None)
    assert isinstance(res.avgpool, nn.AdaptiveAvgPool2d) and isinstance(res.fc, nn.Linear)
    vgg = cm.load("digits_vgg", weights=None)
    assert isinstance(vgg.features, nn.Sequential) and isinstance(vgg.classifier, nn.Sequential)
    vit = cm.load("digits_vit", weights=None)
    pe = vit.patch_embed
    assert isinstance(pe, nn.Conv2d) and pe.kernel_size == pe.stride and vit.num_prefix_tokens == 1
    assert vit.default_layer.endswith("norm1")
    shapes = {}
    for model, expected in ((res, (96, 8, 8)), (vgg, (64, 8, 8)), (vit, (65, 64))):
        layer = model.get_submodule(model.default_layer)
        h = layer.register_forward_hook(lambda m, i, o, model=model: shapes.__setitem__(id(model), tuple(o.shape)))
        try:
            with torch.no_grad():
                assert model(x).shape == (2, 10)
        finally:
            h.remove()
        assert shapes[id(model)] == (2, *expected)
        assert model.categories == [str(d) for d in range(10)] and model.input_size == (64, 64)
    # the hybrid ViT's conv stem hides the 8-pixel token pitch from the patch-size probe; the token grid is
    # still read as 1 class token + an 8x8 grid (the input's aspect ratio)
    grid = readings(torch.zeros(2, 65, 64), 2, (64, 64), patch_size(vit))[0]
    assert (grid.kind, grid.prefix, grid.h, grid.w) == ("tokens", 1, 8, 8)
