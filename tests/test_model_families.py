"""The models people bring (timm, Hugging Face transformers, torchvision; random init, small inputs).

For every architecture: (a) ``layer="auto"`` picks the layer an expert explains (DESIGN.md section
7) and reads its layout as expected; (b) camkit's Grad-CAM equals a Grad-CAM computed here on that
layer with the layout conversion written by hand for the family. Then the other map methods'
formulas on one token model (signed LayerNorm outputs) and one channels-last model (timm Swin).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camkit
from camkit.core.outputs import to_logits

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

Grid = Callable[[torch.Tensor], torch.Tensor]


def nchw(t: torch.Tensor) -> torch.Tensor:
    return t


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def tokens(prefix: int, h: int, w: int) -> Grid:
    return lambda t: t[:, prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=7, **kw)


def _hf(config: str, model: str, **kw) -> Callable[[], nn.Module]:
    return lambda: getattr(transformers, model)(getattr(transformers, config)(num_labels=7, **kw))


SMALL_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64,
                 patch_size=8)
STAGES = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
TINY_SWIN = dict(window_size=2, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
tv = torchvision.models

# id: (builder, input (H, W), expected layer, expected layout, hand-written grid conversion)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int], str, str, Grid]] = {
    # CNNs: the last feature map before global pooling
    "timm-resnet18": (_timm("resnet18"), (64, 96), "layer4", "nchw 2×3", nchw),
    "timm-efficientnet_b0": (_timm("efficientnet_b0"), (64, 64), "bn2", "nchw 2×2", nchw),
    "timm-regnetx_002": (_timm("regnetx_002"), (64, 64), "s4", "nchw 2×2", nchw),
    "timm-mobilenetv3": (_timm("mobilenetv3_small_100"), (64, 64), "blocks", "nchw 2×2", nchw),
    "timm-inception_v3": (_timm("inception_v3"), (107, 107), "Mixed_7c", "nchw 2×2", nchw),
    "tv-resnet18": (lambda: tv.resnet18(num_classes=7), (96, 64), "layer4", "nchw 3×2", nchw),
    "tv-efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=7), (64, 64), "features", "nchw 2×2", nchw),
    "tv-densenet121": (lambda: tv.densenet121(num_classes=7), (64, 64), "features", "nchw 2×2", nchw),
    "tv-regnet_y_400mf": (lambda: tv.regnet_y_400mf(num_classes=7), (64, 64), "trunk_output", "nchw 2×2", nchw),
    "hf-resnet": (_hf("ResNetConfig", "ResNetForImageClassification", embedding_size=8, **STAGES), (64, 96),
                  "resnet.encoder.stages.3", "nchw 2×3", nchw),
    # ConvNeXt and the hybrids: the last stage or the norm after it
    "timm-convnext_atto": (_timm("convnext_atto"), (96, 64), "stages", "nchw 3×2", nchw),
    "tv-convnext": (lambda: tv.convnext.ConvNeXt([tv.convnext.CNBlockConfig(8, 16, 1), tv.convnext.CNBlockConfig(16, None, 1)],
                                                 num_classes=7), (64, 96), "features", "nchw 8×12", nchw),
    "hf-convnext": (_hf("ConvNextConfig", "ConvNextForImageClassification", **STAGES), (96, 64),
                    "convnext.encoder.stages.3", "nchw 3×2", nchw),
    "timm-maxvit": (_timm("maxvit_rmlp_pico_rw_256", img_size=64), (64, 64), "norm", "nchw 2×2", nchw),
    "timm-coatnet": (_timm("coatnet_nano_rw_224", img_size=64), (64, 64), "norm", "nchw 2×2", nchw),
    "timm-efficientformer_l1": (_timm("efficientformer_l1"), (224, 224), "norm", "tokens: 0 prefix, 7×7", tokens(0, 7, 7)),
    "timm-poolformer": (_timm("poolformer_s12"), (64, 64), "stages", "nchw 2×2", nchw),
    "hf-poolformer": (_hf("PoolFormerConfig", "PoolFormerForImageClassification", **STAGES), (64, 64), "norm",
                      "nchw 2×2", nchw),
    "timm-mobilevit": (_timm("mobilevit_xxs"), (64, 64), "final_conv", "nchw 2×2", nchw),
    "timm-fastvit": (_timm("fastvit_t8"), (64, 64), "final_conv", "nchw 2×2", nchw),
    "hf-segformer": (_hf("SegformerConfig", "SegformerForImageClassification", num_attention_heads=[1, 1, 2, 2],
                         decoder_hidden_size=32, **STAGES), (64, 64), "segformer.stages.3", "nchw 2×2", nchw),
    # ViT / DeiT / DINOv2 with class, distillation and register tokens: the last block's pre-attention norm
    "timm-vit-dynamic": (_timm("vit_tiny_patch16_224", img_size=(48, 80), dynamic_img_size=True), (48, 80),
                         "blocks.11.norm1", "tokens: 1 prefix, 3×5", tokens(1, 3, 5)),
    "timm-deit-distilled": (_timm("deit_tiny_distilled_patch16_224", img_size=64), (64, 64), "blocks.11.norm1",
                            "tokens: 2 prefix, 4×4", tokens(2, 4, 4)),
    "timm-dinov2-reg4": (_timm("vit_small_patch14_reg4_dinov2", img_size=56, depth=2), (56, 56), "blocks.1.norm1",
                         "tokens: 5 prefix, 4×4", tokens(5, 4, 4)),
    "timm-deit3": (_timm("deit3_small_patch16_224", img_size=64, depth=2), (64, 64), "blocks.1.norm1",
                   "tokens: 1 prefix, 4×4", tokens(1, 4, 4)),
    "timm-cait": (_timm("cait_xxs24_224", img_size=64, depth=2), (64, 64), "blocks_token_only.1.norm1",
                  "tokens: 1 prefix, 4×4", tokens(1, 4, 4)),
    "tv-vit": (lambda: tv.vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                                hidden_dim=32, mlp_dim=64, num_classes=7),
               (32, 32), "encoder.layers.encoder_layer_1.ln_1", "tokens: 1 prefix, 4×4", tokens(1, 4, 4)),
    "hf-vit": (_hf("ViTConfig", "ViTForImageClassification", **SMALL_VIT), (64, 64), "vit.layers.1.layernorm_before",
               "tokens: 1 prefix, 8×8", tokens(1, 8, 8)),
    "hf-deit": (_hf("DeiTConfig", "DeiTForImageClassificationWithTeacher", **SMALL_VIT), (64, 64),
                "deit.layers.1.layernorm_before", "tokens: 2 prefix, 8×8", tokens(2, 8, 8)),
    # mean- or attention-pooled token models: the final norm (the last block where that norm is an Identity)
    "timm-siglip-like": (_timm("vit_tiny_patch16_224", img_size=64, global_pool="map", class_token=False, depth=2),
                         (64, 64), "norm", "tokens: 0 prefix, 4×4", tokens(0, 4, 4)),
    "timm-eva02-avg": (_timm("eva02_tiny_patch14_224", img_size=56, depth=2), (56, 56), "blocks.1",
                       "tokens: 1 prefix, 4×4", tokens(1, 4, 4)),
    "hf-dinov2": (_hf("Dinov2Config", "Dinov2ForImageClassification", **SMALL_VIT), (64, 64), "dinov2.layernorm",
                  "tokens: 1 prefix, 8×8", tokens(1, 8, 8)),
    "hf-beit-mean": (_hf("BeitConfig", "BeitForImageClassification", use_mean_pooling=True, **SMALL_VIT), (64, 64),
                     "beit.layers.1", "tokens: 1 prefix, 8×8", tokens(1, 8, 8)),
    "timm-mixer": (_timm("mixer_s16_224", img_size=64), (64, 64), "norm", "tokens: 0 prefix, 4×4",
                   tokens(0, 4, 4)),
    # Swin: channels-last in timm, permuted in torchvision, tokens in Hugging Face
    "timm-swin": (_timm("swin_tiny_patch4_window7_224", img_size=(64, 128), **TINY_SWIN), (64, 128), "norm",
                  "nhwc 2×4", nhwc),
    "timm-swinv2": (_timm("swinv2_tiny_window8_256", img_size=64, **TINY_SWIN), (64, 64), "norm", "nhwc 2×2", nhwc),
    "tv-swin": (lambda: tv.swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1],
                                                            num_heads=[1, 2], window_size=[2, 2], num_classes=7),
                (32, 64), "permute", "nchw 4×8", nchw),
    "hf-swin": (_hf("SwinConfig", "SwinForImageClassification", image_size=64, patch_size=4, embed_dim=16,
                    depths=[1, 1], num_heads=[1, 2], window_size=4), (64, 64), "swin.layernorm",
                "tokens: 0 prefix, 8×8", tokens(0, 8, 8)),
    # LeViT and other token pyramids: the last stage, tokens with no prefix
    "timm-levit": (_timm("levit_128s", img_size=128), (128, 128), "stages", "tokens: 0 prefix, 2×2", tokens(0, 2, 2)),
    "timm-hiera": (_timm("hiera_tiny_224", img_size=64), (64, 64), "blocks.11", "tokens: 0 prefix, 2×2", tokens(0, 2, 2)),
    "timm-twins": (_timm("twins_svt_small", img_size=64), (64, 64), "norm", "tokens: 0 prefix, 2×2", tokens(0, 2, 2)),
    # the held-out audit's misses, each a rule of layer="auto" (tests/test_layer_rules.py has the planted cases)
    # a residual branch before its add is never the layer: the norm after the attention's add, not the MLP branch
    "hf-hiera": (_hf("HieraConfig", "HieraForImageClassification", embed_dim=16, num_heads=[1, 1, 2, 2],
                     depths=[1, 1, 1, 1], image_size=[64, 64]), (64, 64),
                 "hiera.encoder.stages.3.layers.0.layernorm_after", "tokens: 0 prefix, 2×2", tokens(0, 2, 2)),
    # a map of per-position class scores (VOLO's aux_head, SqueezeNet's conv classifier) is never the layer
    "timm-volo": (lambda: timm.models.volo.VOLO(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2),
                                                stem_hidden_dim=16, img_size=64, num_classes=7), (64, 64), "norm",
                  "tokens: 1 prefix, 4×4", tokens(1, 4, 4)),
    "tv-squeezenet": (lambda: tv.squeezenet1_1(num_classes=7), (64, 64), "features", "nchw 3×3", nchw),
    # an Identity / eval Dropout passing the image on is no parallel branch
    "tv-identity-resnet18": (lambda: nn.Sequential(nn.Identity(), tv.resnet18(num_classes=7)), (64, 64), "1.layer4",
                             "nchw 2×2", nchw),
    "timm-efficientvit": (_timm("efficientvit_b0"), (64, 64), "head.in_conv", "nchw 2×2", nchw),
    # a softmax over the token dim (CoaT's factorised attention) marks an attention block: its qkv is internal
    "timm-coat-lite": (lambda: timm.models.coat.CoaT(img_size=64, patch_size=4, embed_dims=[32, 32, 32, 32],
                                                     serial_depths=[1, 1, 1, 1], num_heads=8, mlp_ratios=[2, 2, 2, 2],
                                                     num_classes=7), (64, 64), "serial_blocks4.0.norm1",
                       "tokens: 1 prefix, 2×2", tokens(1, 2, 2)),
}


def _build(builder: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = builder().eval()
    for m in model.modules():  # heads initialised to zero (torchvision ViT, Hiera) give no gradient at all
        if isinstance(m, nn.Linear) and m.weight.abs().max() == 0:
            nn.init.normal_(m.weight, std=0.02)
    return model


def _capture(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model logits and the layer output as it left the layer (the model goes on with a clone, so an
    in-place op after the layer, e.g. DenseNet's relu_, changes neither the value nor its gradient)."""
    store = {}

    def hook(_m, _i, out):
        store["a"] = out
        return out.clone()

    h = model.get_submodule(layer).register_forward_hook(hook)
    try:
        logits = to_logits(model(x))
    finally:
        h.remove()
    return logits, store["a"]


def _finish(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    m = F.interpolate(torch.relu(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo, hi = m.flatten(1).min(1).values, m.flatten(1).max(1).values
    return (m - lo[:, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-12))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_layer_and_gradcam_by_hand(family, one_thread):
    builder, size, layer, layout, grid = FAMILIES[family]
    model = _build(builder)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    e = camkit.GradCAM(model).explain(x)
    assert (e.layers, e.layout) == ([layer], [layout])
    _assert_gradcam_by_hand(e, model, layer, grid, x)


def _assert_gradcam_by_hand(e: camkit.Explanation, model: nn.Module, layer: str, grid: Grid, x: torch.Tensor) -> None:
    size = tuple(x.shape[-2:])
    logits, a = _capture(model, layer, x)
    cls = logits.argmax(1, keepdim=True)
    assert e.targets.tolist() == cls[:, 0].tolist()
    (g,) = torch.autograd.grad(logits.gather(1, cls).sum(), a)
    A, G = grid(a.detach()), grid(g)
    w = G.mean((2, 3))
    ref = _finish(torch.einsum("bc,bchw->bhw", w, A), size)
    torch.testing.assert_close(e.weights, w, rtol=1e-3, atol=1e-5 * float(w.abs().max()))
    for i in range(2):
        if ref[i].max() > 0:
            assert _corr(e.maps[i], ref[i]) >= 0.99
        else:
            assert e.maps[i].abs().max() == 0


def test_an_explicit_channels_last_layer_inside_a_convnext_block(one_thread):
    model = _build(_timm("convnext_atto", conv_mlp=False))  # its blocks' norm and MLP run channels-last
    x = torch.rand(2, 3, 128, 192, generator=torch.Generator().manual_seed(1))
    for layer in ("stages.3.blocks.1.norm", "stages.2.blocks.0.norm"):
        e = camkit.GradCAM(model, layer=layer).explain(x)
        assert e.layout == ["nhwc 4×6" if layer.startswith("stages.3") else "nhwc 8×12"]
        _assert_gradcam_by_hand(e, model, layer, nhwc, x)


# -- the other methods' formulas, on a token model and a channels-last model --------------------------

def _token_model() -> tuple[nn.Module, tuple[int, int], str, int, Grid]:
    model = _build(_timm("vit_tiny_patch16_224", img_size=(48, 80), dynamic_img_size=True, embed_dim=32, depth=2,
                         num_heads=2))
    return model, (48, 80), "blocks.1.norm1", 1, tokens(1, 3, 5)


def _nhwc_model() -> tuple[nn.Module, tuple[int, int], str, int, Grid]:
    model = _build(_timm("swin_tiny_patch4_window7_224", img_size=(64, 128), window_size=2, embed_dim=4,
                         depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)))
    return model, (64, 128), "norm", 0, nhwc


def _ablate_raw(t: torch.Tensor, grid: Grid, k: int) -> torch.Tensor:
    """The raw layer output with grid channel ``k`` zeroed, written per layout."""
    t = t.clone()
    if grid is nhwc:
        t[..., k] = 0
    else:  # tokens: the grid tokens' channel k, prefix tokens untouched
        t[:, 1:, k] = 0
    return t


def _reference(method: str, model: nn.Module, layer: str, grid: Grid, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Raw map (B, h, w) before ReLU, by the method's formula, straight from its definition."""
    logits, a = _capture(model, layer, x)
    A = grid(a.detach()).double()
    if method in ("gradcam++", "xgradcam", "layercam", "hirescam"):
        (g,) = torch.autograd.grad(logits.gather(1, cls).sum(), a)
        G = grid(g).double()
        if method == "xgradcam":
            s = A.sum((2, 3), keepdim=True)  # signed: LayerNorm outputs have both signs
            w = (A / s * G).sum((2, 3))
        elif method == "gradcam++":
            alpha = G ** 2 / (2 * G ** 2 + A.sum((2, 3), keepdim=True) * G ** 3)
            w = (torch.nan_to_num(alpha) * G.clamp_min(0)).sum((2, 3))
        elif method == "layercam":
            return (G.clamp_min(0) * A).sum(1)
        else:
            return (G * A).sum(1)
        return torch.einsum("bc,bchw->bhw", w, A)
    if method == "eigencam":
        out = []
        for b in range(A.shape[0]):
            m = A[b].flatten(1).T  # (hw, C)
            m = m - m.mean(0)
            _, _, vh = torch.linalg.svd(m, full_matrices=False)
            p = m @ vh[0]
            if _corr(p, A[b].abs().mean(0).flatten()) < 0:
                p = -p
            out.append(p.view(A.shape[2:]))
        return torch.stack(out)
    y = logits.gather(1, cls)[:, 0].detach().double()
    weights = torch.zeros(A.shape[:2], dtype=torch.float64)
    for k in range(A.shape[1]):
        if method == "ablationcam":
            h = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o, k=k: _ablate_raw(o, grid, k))
            with torch.no_grad():
                yk = to_logits(model(x)).gather(1, cls)[:, 0].double()
            h.remove()
            weights[:, k] = (y - yk) / y.abs()
        else:  # scorecam: the input masked by channel k, upsampled and min-max normalised
            up = F.interpolate(A[:, k:k + 1].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
            lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
            mask = torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up))
            with torch.no_grad():
                weights[:, k] = torch.softmax(to_logits(model(x * mask)).double(), 1).gather(1, cls)[:, 0]
    if method == "scorecam":
        weights = torch.softmax(weights, 1)
    return torch.einsum("bc,bchw->bhw", weights, A)


@pytest.mark.parametrize("which", ["tokens", "nhwc"])
@pytest.mark.parametrize("method", ["gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "ablationcam", "scorecam"])
def test_method_formulas_on_token_and_channels_last_layers(which, method, one_thread):
    model, size, layer, _, grid = _token_model() if which == "tokens" else _nhwc_model()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2))
    e = camkit.create(method, model).explain(x)
    assert e.layers == [layer]
    cls = e.targets[:, None]
    ref = torch.relu(_reference(method, model, layer, grid, x, cls)).float()
    scale = float(ref.abs().max())
    torch.testing.assert_close(e.raw, ref, rtol=2e-3, atol=2e-4 * scale)
    if which == "tokens" and method == "xgradcam":  # signed activations: sum A and sum |A| differ here
        A = grid(_capture(model, layer, x)[1].detach())
        assert (A.sum((2, 3)) - A.abs().sum((2, 3))).abs().max() > 0.1


def test_hiera_unrolled_stage_is_refused_and_its_last_stage_read(one_thread):
    model = _build(_timm("hiera_tiny_224"))
    x = torch.rand(1, 3, 224, 224)
    with pytest.raises(camkit.InputError, match="not in raster order"):
        camkit.GradCAM(model, layer="blocks.4").explain(x)
    assert camkit.GradCAM(model, layer="blocks.11").explain(x).layout == ["tokens: 0 prefix, 7×7"]


@pytest.mark.parametrize("which", ["tokens", "nhwc"])
def test_guided_gradcam_uses_the_same_layout(which, one_thread):
    model, size, layer, _, _ = _token_model() if which == "tokens" else _nhwc_model()
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(3))
    guided = camkit.GuidedGradCAM(model).explain(x)
    cam = camkit.GradCAM(model).explain(x)
    assert guided.layers == [layer]
    torch.testing.assert_close(guided.raw, cam.raw)
    attr = camkit.GuidedBackprop(model).explain(x).maps
    torch.testing.assert_close(guided.maps, attr * cam.maps[:, None], rtol=1e-4, atol=1e-7)


def test_hf_segmenter_auto_explains_the_backbone_not_the_decoder_or_its_logits(one_thread):
    model = _build(_hf("SegformerConfig", "SegformerForSemanticSegmentation", num_attention_heads=[1, 1, 2, 2],
                       decoder_hidden_size=32, **STAGES))
    x = torch.rand(1, 3, 64, 64)
    e = camkit.GradCAM(model).explain(x, targets=camkit.targets.Segmentation(1))
    assert (e.layers, e.layout) == (["segformer.stages.3"], ["nchw 2×2"])
