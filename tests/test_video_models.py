"""The video / volume model matrix: ``layer="auto"`` + Grad-CAM on real architectures (random weights).

Clips as small as each model takes; MViT only takes 16x224^2 clips and S3D at least 14x224^2 (a forward
takes seconds on a CPU), so those are marked ``slow``.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import camkit

pytest.importorskip("torchvision.models.video")

TORCHVISION = [  # name, clip (T, H, W), expected layer, expected reading
    ("r3d_18", (4, 32, 32), "layer4", "ncthw 1×2×2"),
    ("mc3_18", (4, 32, 32), "layer4", "ncthw 4×2×2"),
    ("r2plus1d_18", (4, 32, 32), "layer4", "ncthw 1×2×2"),
    ("swin3d_t", (4, 64, 64), "norm", "nthwc 2×2×2"),
    pytest.param("s3d", (14, 224, 224), "features", "ncthw 2×7×7", marks=pytest.mark.slow),
    pytest.param("mvit_v1_b", (16, 224, 224), "blocks.15.norm1", "tokens: 1 prefix, 8×7×7", marks=pytest.mark.slow),
    pytest.param("mvit_v2_s", (16, 224, 224), "blocks.15.norm1", "tokens: 1 prefix, 8×7×7", marks=pytest.mark.slow),
]


def check(model: torch.nn.Module, x: torch.Tensor, layer: str, reading: str) -> None:
    e = camkit.GradCAM(model, layer="auto").explain(x)
    assert e.layers == [layer]
    assert e.layout == [reading]
    assert e.maps.shape == (x.shape[0], *x.shape[2:])
    assert torch.isfinite(e.maps).all() and float(e.maps.max()) in (0.0, 1.0)  # 0: relu of a random net's map


@pytest.mark.parametrize("name,clip,layer,reading", TORCHVISION)
def test_torchvision_video_auto_gradcam(name, clip, layer, reading):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = camkit.models.load(f"torchvision:{name}", weights=None)
    assert model.grid_dims == 3 and len(model.input_size) == 3 and model.categories
    torch.manual_seed(1)
    check(model, torch.rand(1, 3, *clip), layer, reading)


MONAI = [  # name, expected layer at a 1x16^3 volume (the last stage is 1x1x1 there: no map)
    ("resnet18", "layer3", "ncthw 2×2×2"),
    ("seresnet50", "layer2", "ncthw 2×2×2"),  # its stem strides 4, layer3 is 1x1x1 at 16^3
    pytest.param("densenet121", "features.transition3.conv", "ncthw 2×2×2", marks=pytest.mark.slow),
]
SIDE = {"densenet121": 32}  # its last pooling needs 32^3


@pytest.mark.parametrize("name,layer,reading", MONAI)
def test_monai_3d_auto_gradcam(name, layer, reading):
    pytest.importorskip("monai")
    torch.manual_seed(0)
    model = camkit.models.load(f"monai:{name}", weights=None, spatial_dims=3, in_channels=1, out_channels=2)
    assert model.grid_dims == 3
    side = SIDE.get(name, 16)
    check(model, torch.rand(1, 1, side, side, side), layer, reading)


def test_monai_loader_spelling_and_errors():
    pytest.importorskip("monai")
    with pytest.raises(camkit.errors.UnsupportedModelError, match="Did you mean"):
        camkit.models.load("monai:densenet12", weights=None)
    with pytest.raises(camkit.errors.UnsupportedModelError, match="never downloads"):
        camkit.models.load("monai:resnet18", weights=None, pretrained=True)
    with pytest.raises(camkit.errors.UnsupportedModelError, match="did you mean 'monai:resnet18'"):
        camkit.models.load("monia:resnet18")


def test_hf_videomae_auto_gradcam():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = camkit.models.HFVideo(transformers.VideoMAEForVideoClassification(cfg).eval())
    check(model, torch.rand(1, 3, 4, 32, 32), "model.videomae.encoder.layer.1", "tokens: 0 prefix, 2×4×4")


def test_cli_model_options_reach_the_builder(tmp_path, capsys):
    """``camkit explain --model monai:NAME --model-option KEY=VALUE``: the options go to MONAI's builder."""
    pytest.importorskip("monai")
    import numpy as np
    from PIL import Image

    from camkit.cli import main
    from camkit.cli.common import model_options

    assert model_options(["spatial_dims=2", "act=relu", "block_config=(1, 2)"]) == (
        ("spatial_dims", 2), ("act", "relu"), ("block_config", (1, 2)))
    with pytest.raises(camkit.errors.CamkitError, match="KEY=VALUE"):
        model_options(["spatial_dims"])
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(tmp_path / "a.png")
    main(["explain", str(tmp_path / "a.png"), "--model", "monai:resnet18", "--weights", "random",
          "--model-option", "spatial_dims=2", "--model-option", "in_channels=3", "--model-option", "out_channels=2",
          "-o", str(tmp_path / "out")])
    assert (tmp_path / "out" / "a_gradcam.npy").is_file()
    assert np.load(tmp_path / "out" / "a_gradcam.npy").ndim >= 2
