"""Rules of ``layer="auto"`` and of reading named layers, each from a miss of the held-out model audit
(issue 21), on the real model (random init, small configs) or a planted one. The families in
``test_model_families.py`` check the same rules' choices with a Grad-CAM computed by hand."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camkit

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def _coat(parallel_depth: int = 0) -> nn.Module:
    torch.manual_seed(0)
    return timm.models.coat.CoaT(img_size=64, patch_size=4, embed_dims=[32, 32, 32, 32], serial_depths=[1, 1, 1, 1],
                                 parallel_depth=parallel_depth, num_heads=8, mlp_ratios=[2, 2, 2, 2],
                                 num_classes=7).eval()


class LayerScaled(nn.Module):
    """``t + gamma * branch(t)`` (a layer-scaled residual, as in CaiT / DeiT III blocks) after a stride-4 stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = _Scale(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x)
        t = t + self.scale(self.branch(t))
        return self.head(t.mean((2, 3)))


class _Scale(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, c, 1, 1), 0.5))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.gamma


def test_a_residual_branch_before_its_add_is_never_the_auto_layer():
    # the branch and its scaled copy are added to the stem's output they were computed from: the stem is the map
    assert camkit.GradCAM(LayerScaled()).explain(torch.rand(1, 3, 16, 24)).layers == ["stem"]


def test_softmax_over_the_token_dim_marks_attention_and_refusals_name_layers_that_work(one_thread):
    model = _coat()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(camkit.InputError, match="attention internal") as refused:
        camkit.GradCAM(model, layer="serial_blocks4.0.factoratt_crpe.qkv").explain(x)
    named = ["serial_blocks4.0.norm1", "serial_blocks4.0"]
    assert " or ".join(repr(n) for n in named) in str(refused.value)
    for layer in named:
        assert camkit.GradCAM(model, layer=layer).explain(x).layout == ["tokens: 1 prefix, 2×2"]
    # CoaT's parallel blocks: auto cannot decide, and names the blocks' norms, not their fused qkv layers
    model = _coat(parallel_depth=1)
    with pytest.raises(camkit.LayerNotFoundError, match="cannot decide") as undecided:
        camkit.GradCAM(model).explain(x)
    names = [f"parallel_blocks.0.norm1{i}" for i in (2, 3, 4)]
    assert ", ".join(repr(n) for n in names) in str(undecided.value) and "qkv" not in str(undecided.value)
    assert camkit.GradCAM(model, layer=names).explain(x).layers == names


def test_an_explicit_key_reads_one_tensor_of_a_tuple_of_tokens(one_thread):
    torch.manual_seed(0)
    cfg = timm.models.mvitv2.MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16, num_heads=1)
    mvit = timm.models.mvitv2.MultiScaleVit(cfg, img_size=(128, 128), num_classes=7).eval()  # stages return (x, size)
    e = camkit.GradCAM(mvit, layer="stages.3[0]").explain(torch.rand(1, 3, 128, 128))
    assert e.layout == ["tokens: 0 prefix, 4×4"]  # a grid of 4×4 is checked to be a raster grid
    d2v = transformers.Data2VecVisionForImageClassification(transformers.Data2VecVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=8,
        num_labels=7)).eval()
    layer = "data2vec_vision.encoder.layer.1[0]"
    assert camkit.GradCAM(d2v, layer=layer).explain(torch.rand(1, 3, 64, 64)).layout == ["tokens: 1 prefix, 8×8"]
    hiera = transformers.HieraForImageClassification(transformers.HieraConfig(
        embed_dim=16, num_heads=[1, 1, 2, 2], depths=[1, 1, 1, 1], image_size=[64, 64], num_labels=7)).eval()
    with pytest.raises(camkit.InputError, match="not in raster order"):  # Hiera's unrolled stage: a clear refusal
        camkit.GradCAM(hiera, layer="hiera.encoder.stages.1.layers.0[0]").explain(torch.rand(1, 3, 64, 64))


def test_the_auto_layer_is_chosen_again_after_a_module_is_replaced(one_thread):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.rand(1, 3, 64, 64)
    assert camkit.GradCAM(model).explain(x).layers == ["layer4"]
    model.layer4, model.fc = nn.Identity(), nn.Linear(256, 7)
    assert camkit.GradCAM(model).explain(x).layers == ["layer3"]  # layer4 only passes layer3's map on now


def test_a_hugging_face_vit_at_another_size_says_how(one_thread):
    torch.manual_seed(0)
    net = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=8,
        num_labels=7)).eval()
    with pytest.raises(camkit.InputError, match=r"96×80.*interpolate_pos_encoding=True.*hf:DIR"):
        camkit.GradCAM(net).explain(torch.rand(1, 3, 96, 80))


def test_the_probe_cache_does_not_keep_an_explained_model_alive():
    """The auto-layer probe is cached per model (weakly): once the user drops the model, it is freed."""
    import gc
    import weakref

    model = torchvision.models.resnet18(num_classes=5).eval()
    camkit.GradCAM(model)(torch.rand(1, 3, 64, 64))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
