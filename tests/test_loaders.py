"""Models loaded by name from timm, Hugging Face and torchvision: weights round trips, preprocessing
from each library's own config, categories, default layers, spec parsing and clear errors."""
from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import camkit
import camkit.models as cm
from camkit.bench.sources import load_model, parse_model_spec
from camkit.errors import CamkitError, UnsupportedModelError

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")]

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def _normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``, written out by hand."""
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, img_size=64, num_classes=5).eval()


def test_timm_checkpoint_round_trip_equals_original_on_normalised_pixels(timm_vit, tmp_path) -> None:
    other = {k: torch.randn_like(v) for k, v in timm_vit.state_dict().items()}
    path = tmp_path / "ckpt.pth"  # timm's training layout, saved from a DataParallel wrapper: EMA wins
    torch.save({"epoch": 3, "state_dict": other,
                "state_dict_ema": {f"module.{k}": v for k, v in timm_vit.state_dict().items()}}, path)
    model = cm.load("timm:test_vit", weights=path, img_size=64, num_classes=5)
    cfg = timm_vit.pretrained_cfg
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), timm_vit(_normalised(x, cfg["mean"], cfg["std"])), atol=1e-5)
    assert isinstance(model, type(timm_vit)) and not model.training and model.task == "classification"
    assert model.input_size == (64, 64) and model.interpolation == cfg["interpolation"]
    assert model.crop_pct == cfg["crop_pct"] and model.categories is None  # 5 classes: no ImageNet names
    assert list(model.state_dict()) == list(timm_vit.state_dict())  # the architecture's own names
    assert model.default_layer in dict(model.named_modules())
    with camkit.GradCAM(model, layer="blocks.1.norm1") as cam:  # natural timm layer name
        assert cam(x).shape == (2, 64, 64)
    again = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(again(x), model(x)) and torch.equal(copy.deepcopy(model)(x), model(x))


def test_timm_safetensors_file_and_imagenet_categories(tmp_path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(1)
    net = timm.create_model("test_resnet", pretrained=False).eval()
    path = tmp_path / "model.safetensors"
    safetensors.save_file(net.state_dict(), str(path))
    model = cm.load("timm:test_resnet", weights=str(path))
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), net(_normalised(x, net.pretrained_cfg["mean"], net.pretrained_cfg["std"])),
                              atol=1e-5)
    assert model.input_size == tuple(net.pretrained_cfg["input_size"][1:])
    assert len(model.categories) == 1000 and model.categories[0].startswith("tench")


def test_timm_random_init_warns_and_bad_inputs_are_clear(timm_vit, tmp_path) -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        cm.load("timm:test_convnext")
    with pytest.raises(UnsupportedModelError, match="Did you mean: test_vit"):
        cm.load("timm:test_vitt", weights=None)
    with pytest.raises(UnsupportedModelError, match="never downloads"):
        cm.load("timm:test_vit", weights=None, pretrained=True)
    with pytest.raises(FileNotFoundError, match="not a file"):
        cm.load("timm:test_vit", weights="imagenet")
    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), wrong)
    with pytest.raises(UnsupportedModelError, match=r"missing keys: 'cls_token'.*unexpected keys: 'conv1"):
        cm.load("timm:test_vit", weights=wrong, img_size=64, num_classes=5)
    with pytest.raises(UnsupportedModelError, match="no model"):
        cm.load("timm:", weights=None)


def test_missing_extras_name_the_pip_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(UnsupportedModelError, match=r"pip install 'camkit\[timm\]'"):
        cm.load("timm:test_vit")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UnsupportedModelError, match=r"pip install 'camkit\[hf\]'"):
        cm.load(f"hf:{tmp_path}")


# -------------------------------------------------------------------------------------- Hugging Face

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _save(model: nn.Module, folder: Path, processor: dict) -> Path:
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(2)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64,
                                    id2label={0: "cat", 1: "dog", 2: "fish"}, label2id={"cat": 0, "dog": 1, "fish": 2})
    net = transformers.ViTForImageClassification(config).eval()
    # the processor's terms: uint8 pixels, rescaled by 1/255, then normalised
    proc = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
            "image_std": list(STD), "do_resize": True, "size": {"height": 32, "width": 32}, "resample": 3}
    return net, _save(net, tmp_path_factory.mktemp("hf") / "my-vit", proc)


def test_hf_classifier_from_directory(hf_vit) -> None:
    net, folder = hf_vit
    model = cm.load(f"hf:{folder}")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, net(_normalised(x, MEAN, STD)).logits, atol=1e-5)
    assert model.categories == ["cat", "dog", "fish"] and model.input_size == (32, 32)
    assert model.task == "classification" and model.interpolation == "bicubic" and not model.training
    assert isinstance(model, transformers.ViTForImageClassification)
    assert model.default_layer in dict(model.named_modules())
    with camkit.GradCAM(model, layer="auto") as cam:  # .logits handled
        assert cam(x, targets=[0, 2]).shape == (2, 32, 32)
    assert load_model(f"hf:{folder}").categories == model.categories  # the bench's path


def test_hf_vit_at_another_size_interpolates_its_position_embeddings(hf_vit) -> None:
    net, folder = hf_vit
    model = cm.load(f"hf:{folder}")
    x = torch.rand(2, 3, 48, 40)  # built for 32×32
    with torch.no_grad():
        expected = net(_normalised(x, MEAN, STD), interpolate_pos_encoding=True).logits
        assert torch.allclose(model(x).logits, expected, atol=1e-5)
        native = torch.rand(1, 3, 32, 32)  # at its own size the model runs as it always did
        assert torch.allclose(model(native).logits, net(_normalised(native, MEAN, STD)).logits, atol=1e-5)
    e = camkit.GradCAM(model).explain(x, targets=[0, 2])
    assert e.layers == [model.default_layer] and e.layout == ["tokens: 1 prefix, 6×5"]
    store = {}  # Grad-CAM weights by hand on the default layer, the network called with the flag
    h = net.get_submodule(model.default_layer).register_forward_hook(lambda _m, _i, o: store.update(a=o))
    logits = net(_normalised(x, MEAN, STD), interpolate_pos_encoding=True).logits
    h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, torch.tensor([[0], [2]])).sum(), store["a"])
    torch.testing.assert_close(e.weights, g[:, 1:].mean(1), rtol=1e-4, atol=1e-6)  # class token dropped


def test_hf_preprocessing_is_read_from_the_processor_config() -> None:
    from camkit.models.hf_loader import categories, input_size, pixel_normalisation

    cfg = transformers.ViTConfig(image_size=40)
    imagenet255 = {"do_rescale": False, "image_mean": [123.675, 116.28, 103.53], "image_std": [58.395, 57.12, 57.375]}
    mean, std = pixel_normalisation(imagenet255, "t")  # 255 x - mean = 255 (x - mean / 255)
    assert mean == pytest.approx([0.485, 0.456, 0.406]) and std == pytest.approx([0.229, 0.224, 0.225])
    assert pixel_normalisation({"do_normalize": False, "rescale_factor": 1 / 127.5}, "t") == ([0.0] * 3, [0.5] * 3)
    with pytest.raises(UnsupportedModelError, match="BGR"):
        pixel_normalisation({"do_flip_channel_order": True}, "t")
    with pytest.raises(UnsupportedModelError, match="image_std"):
        pixel_normalisation({"image_mean": [0.5] * 3}, "t")
    assert input_size({"size": {"shortest_edge": 224}, "crop_pct": 0.875}, cfg, "t") == (224, 224)
    assert input_size({"size": {"height": 64, "width": 96}, "do_center_crop": True,
                       "crop_size": {"height": 56, "width": 80}}, cfg, "t") == (56, 80)
    assert input_size({}, cfg, "t") == (40, 40)
    with pytest.raises(UnsupportedModelError, match="input size"):
        input_size({"size": {"longest_edge": 9}}, SimpleNamespace(), "t")
    assert categories(transformers.ViTConfig(num_labels=3)) is None  # LABEL_0, LABEL_1, LABEL_2


def test_hf_segmentation_model_from_directory(tmp_path) -> None:
    torch.manual_seed(3)
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        id2label={0: "background", 1: "digit"}, label2id={"background": 0, "digit": 1})
    net = transformers.SegformerForSemanticSegmentation(config).eval()
    folder = _save(net, tmp_path / "seg", {"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                           "size": {"height": 64, "width": 64}})
    model = cm.load(f"hf:{folder}")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, net(x * 2 - 1).logits, atol=1e-5)
    assert model.task == "segmentation" and model.categories == ["background", "digit"]
    assert model.default_layer is not None and model.default_layer.startswith("segformer.")


def test_hf_bad_directories_are_clear(hf_vit, tmp_path) -> None:
    net, folder = hf_vit
    with pytest.raises(FileNotFoundError, match="no such directory.*never downloads"):
        cm.load("hf:google/vit-base-patch16-224")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        cm.load(f"hf:{tmp_path}")
    bare = tmp_path / "bare"
    net.save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        cm.load(f"hf:{bare}")
    headless = _save(transformers.ViTModel(net.config), tmp_path / "headless", {"image_mean": [0.5] * 3,
                                                                                "image_std": [0.5] * 3})
    with pytest.raises(UnsupportedModelError, match="ViTModel.*neither an image classifier"):
        cm.load(f"hf:{headless}")
    resized = tmp_path / "four-classes"  # config says 4 classes, the weights hold 3
    _save(net, resized, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    cfg = json.loads((resized / "config.json").read_text())
    cfg["id2label"] = {str(i): f"c{i}" for i in range(4)}
    cfg["label2id"] = {f"c{i}": i for i in range(4)}
    (resized / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="shape mismatches.*classifier"):
        cm.load(f"hf:{resized}")
    with pytest.raises(UnsupportedModelError, match="weights come from the directory"):
        cm.load(f"hf:{folder}", weights="other.pth")
    random_init = cm.load(f"hf:{folder}", weights=None)  # the directory's config, fresh weights
    assert random_init.categories == ["cat", "dog", "fish"]
    assert not torch.equal(random_init.classifier.weight, net.classifier.weight)


# ---------------------------------------------------------------------------------------- torchvision


def test_torchvision_classifier_from_file(tmp_path) -> None:
    import torchvision

    torch.manual_seed(4)
    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model = cm.load("torchvision:resnet18", weights=tmp_path / "r18.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), net(_normalised(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
                              atol=1e-5)
    assert model.default_layer == "layer4" and model.task == "classification" and model.input_size == (224, 224)
    assert model.categories[:2] == ["tench", "goldfish"] and model.crop_pct == pytest.approx(224 / 256)


def test_torchvision_detector_from_file_takes_pixels_as_they_are(tmp_path) -> None:
    import torchvision

    torch.manual_seed(5)
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    net = torchvision.models.get_model(name, weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    torch.save(net.state_dict(), tmp_path / "det.pth")
    model = cm.load(f"torchvision:{name}", weights=tmp_path / "det.pth", box_score_thresh=0.0)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ours, theirs = model(x)[0], net(x)[0]
    assert len(theirs["boxes"]) > 0
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-5) for k in ("boxes", "scores", "labels"))
    assert model.task == "detection" and model.categories[:2] == ["__background__", "person"]
    assert model.input_size == (320, 320) and model.default_layer.startswith("backbone.body.")


def test_torchvision_segmenter_and_refusals() -> None:
    model = cm.load("torchvision:lraspp_mobilenet_v3_large", weights=None)
    assert model.task == "segmentation" and len(model.categories) == 21
    assert model.default_layer.startswith("backbone.")
    assert cm.load("torchvision:resnet18", weights=None, num_classes=7).categories is None
    with pytest.raises(UnsupportedModelError, match="optical flow"):  # video classifiers load (test_video_models)
        cm.load("torchvision:raft_small", weights=None)
    with pytest.raises(UnsupportedModelError, match="Did you mean: resnet18"):
        cm.load("torchvision:resnet81", weights=None)
    with pytest.raises(UnsupportedModelError, match="only for timm:"):
        cm.load("resnet50", weights=None, num_classes=3)


# ------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("spec, expected", [
    ("resnet50", ("resnet50", "default")),
    ("timm:vit_small_patch16_224=ckpt.pth", ("timm:vit_small_patch16_224", "ckpt.pth")),
    ("timm:convnext_tiny=C:\\w\\a=b.pth", ("timm:convnext_tiny", "C:\\w\\a=b.pth")),
    ("torchvision:resnet18=random", ("torchvision:resnet18", None)),
    ("hf:./my-vit", ("hf:./my-vit", "default")),
    ("hf:./runs/lr=0.1", ("hf:./runs/lr=0.1", "default")),  # a directory name holding '='
    ("hf:C:\\models\\vit=random", ("hf:C:\\models\\vit", None)),
])
def test_model_specs_parse(spec, expected) -> None:
    assert parse_model_spec(spec) == expected


def test_model_spec_with_empty_weights_is_an_error() -> None:
    with pytest.raises(CamkitError, match="nothing after '='"):
        parse_model_spec("timm:resnet18=")


def test_cli_lists_prefixes_and_explains_a_timm_model(tmp_path, capsys) -> None:
    from camkit.cli import main

    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(p in listed for p in ("timm:NAME", "hf:DIR", "torchvision:NAME"))
    torch.manual_seed(6)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    torch.save(net.state_dict(), tmp_path / "ckpt.pth")
    from PIL import Image

    Image.new("RGB", (50, 40), (200, 30, 90)).save(tmp_path / "img.png")
    argv = ["explain", str(tmp_path / "img.png"), "--model", "timm:test_resnet", "--weights",
            str(tmp_path / "ckpt.pth"), "--method", "gradcam", "-o", str(tmp_path / "out")]
    assert main(argv) == 1  # 1000-class file vs 4-class checkpoint: the key mismatch is reported
    assert "shape mismatches" in capsys.readouterr().err
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), tmp_path / "ckpt.pth")
    load_model.cache_clear()
    assert main(argv) == 0
    assert (tmp_path / "out" / "img_gradcam.png").is_file()


def test_images_are_resized_with_the_models_interpolation() -> None:
    import torch.nn.functional as F

    from camkit.data import resize_image

    image = torch.rand(3, 40, 30)
    bicubic = F.interpolate(image[None], size=(16, 12), mode="bicubic", antialias=True, align_corners=False)[0]
    assert torch.allclose(resize_image(image, (16, 12), "bicubic"), bicubic.clamp(0, 1))
    assert not torch.allclose(resize_image(image, (16, 12)), bicubic.clamp(0, 1), atol=1e-3)
