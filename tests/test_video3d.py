"""Clips and volumes (B, C, T, H, W): every 3-D method, layouts, loaders, bad input, peers (issue 21)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from camkit.errors import InputError
from camkit.layers import auto_layer, readings
from camkit.methods import get, list_methods


def tiny3d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(3, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(),
        nn.Conv3d(6, 8, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# ---- the formula, by hand --------------------------------------------------------------------------

def test_gradcam_5d_equals_hand_formula_float64():
    """Grad-CAM on a clip: w_c = mean over (t, h, w) of dS/dA_c, L = relu(sum_c w_c A_c), upsampled
    trilinearly (align_corners=False) to T x H x W and min-max normalised per clip."""
    net = tiny3d().double()
    x = torch.rand(2, 3, 4, 12, 10, dtype=torch.float64)
    layer = net[3]
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    a_out = None
    try:
        logits = net(x)
    finally:
        h.remove()
    a_out = acts["a"]
    cls = logits.argmax(1)
    g = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), a_out)[0]
    w = g.mean(dim=(2, 3, 4))
    cam = torch.relu((w[:, :, None, None, None] * a_out).sum(1, keepdim=True))
    up = F.interpolate(cam, size=(4, 12, 10), mode="trilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = up.flatten(1).max(1).values.view(-1, 1, 1, 1)
    want = (up - lo) / (hi - lo)
    e = camkit.GradCAM(net, layer="3").explain(x)
    assert e.maps.shape == (2, 4, 12, 10)
    assert e.layout == ["ncthw 4×6×5"]
    torch.testing.assert_close(e.maps.double(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(e.targets, cls)


def test_topk_on_clips_and_channels_last_3d_equals_ncthw():
    """TopK gives (B, K, T, H, W); the same grid read channels-last (B, t, h, w, C) gives the same maps."""
    class Last(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = tiny3d()[:5]
            self.perm = nn.Identity()
            self.head = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.perm(self.body(x).permute(0, 2, 3, 4, 1))  # (B, t, h, w, C)
            return self.head(a.mean(dim=(1, 2, 3)))

    net = Last().eval()
    x = torch.rand(2, 3, 4, 16, 16)
    m_last = camkit.GradCAM(net, layer="perm")(x, targets=camkit.TopK(2))
    m_first = camkit.GradCAM(net, layer="body")(x, targets=camkit.TopK(2))
    assert m_last.shape == (2, 2, 4, 16, 16)
    torch.testing.assert_close(m_last, m_first, atol=1e-5, rtol=0)
    assert camkit.GradCAM(net, layer="perm").explain(x).layout == ["nthwc 4×8×8"]


# ---- every method, a tiny 3-D net ------------------------------------------------------------------

FAST = {"sscam": {"samples": 2}, "iscam": {"samples": 2}, "smoothgradcam++": {"n": 2}, "dff": {"k": 2}}


@pytest.mark.parametrize("name", list_methods())
def test_every_method_on_a_clip(name):
    cls = get(name)
    net = tiny3d()
    x = torch.rand(2, 3, 2, 12, 12)
    method = cls(net, **FAST.get(name, {}))
    if 3 not in cls.grid_dims:  # declared, never guessed from the name
        with pytest.raises(InputError, match=r"\(B, C, H, W\) inputs only"):
            method(x)
        assert cls.grid_note
        return
    e = method.explain(x)
    if cls.output == "attribution":
        assert e.maps.shape == (2, 3, 2, 12, 12)
        return
    lead = (2, 2) if cls.output == "concepts" else (2,)
    assert e.maps.shape == (*lead, 2, 12, 12)
    assert torch.isfinite(e.maps).all() and e.maps.min() >= 0 and e.maps.max() <= 1
    peaks = e.maps.flatten(len(lead)).amax(-1)
    assert ((peaks == 1) | (peaks == 0)).all()  # normalised per clip, not per frame
    if cls.output == "cam" and not cls.baseline:
        frames = e.maps.flatten(-2).amax(-1)  # (B, T): the per-frame peaks differ: one normalisation per clip
        assert frames.shape == (2, 2)


def test_scorecam_on_a_clip_counts_frames_against_batch_size():
    """Masked clips run in passes of batch_size // T clips: a 4-frame clip with batch_size=8 -> 2 per pass."""
    net = tiny3d()
    x = torch.rand(1, 3, 4, 16, 16)
    sizes: list[int] = []
    h = net.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    try:
        small = camkit.ScoreCAM(net, layer="3", batch_size=8)(x)
    finally:
        h.remove()
    assert max(sizes[2:]) == 2  # the first calls: probe and explained forward
    big = camkit.ScoreCAM(net, layer="3", batch_size=64)(x)
    torch.testing.assert_close(small, big, atol=1e-5, rtol=0)


# ---- layouts ---------------------------------------------------------------------------------------

def test_video_token_readings():
    meta = lambda *s: torch.empty(s, device="meta")  # noqa: E731
    # torchvision MViT: class token + 8x7x7 at 16x224^2 (time downsampled less than space)
    r = readings(meta(1, 393, 768), 1, (16, 224, 224))[0]
    assert (r.kind, r.prefix, r.grid) == ("tokens", 1, (8, 7, 7))
    # VideoMAE: tubelets 2x16x16, no class token
    r = readings(meta(1, 8 * 14 * 14, 384), 1, (16, 224, 224), patch=(2, 16, 16))[0]
    assert (r.prefix, r.grid) == (0, (8, 14, 14))
    # TimeSformer: a 2-D patch embedding per frame, one class token
    r = readings(meta(1, 1 + 4 * 4 * 4, 64), 1, (4, 32, 32), patch=(8, 8))[0]
    assert (r.prefix, r.grid) == (1, (4, 4, 4))
    # channels-last 3-D (swin3d_t) and NCTHW
    assert str(readings(meta(1, 8, 7, 7, 768), 1, (16, 224, 224))[0]) == "nthwc 8×7×7"
    assert str(readings(meta(1, 512, 2, 7, 7), 1, (16, 112, 112))[0]) == "ncthw 2×7×7"
    # a grid with more time cells than frames is no grid of this clip
    assert not readings(meta(1, 8, 32, 2, 2), 1, (4, 32, 32))
    assert not readings(meta(1, 3, 40, 7, 7), 1, (16, 112, 112))


def test_token_reading_applies_in_raster_order():
    from camkit.layers import Layout
    t = torch.arange(1 * (1 + 2 * 3 * 4) * 5).view(1, 25, 5)
    grid = Layout("tokens", 3, 4, prefix=1, t=2)(t)
    assert grid.shape == (1, 5, 2, 3, 4)
    assert int(grid[0, 2, 1, 2, 3]) == int(t[0, 1 + (1 * 12 + 2 * 4 + 3), 2])


def test_layout_aliases_and_reshape_on_clips():
    net = tiny3d()
    x = torch.rand(1, 3, 4, 16, 16)
    a = camkit.GradCAM(net, layer="3", layout="ncthw")(x)
    b = camkit.GradCAM(net, layer="3")(x)
    torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match=r"\(B, C, t, h, w\)"):
        camkit.GradCAM(net, layer="3", reshape=lambda t: t.flatten(2))(x)


# ---- bad input -------------------------------------------------------------------------------------

def test_5d_input_to_a_2d_model_and_4d_to_a_3d_model():
    net2d = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(InputError, match=r"takes images \(B, C, H, W\).*got a 5-D input"):
        camkit.GradCAM(net2d)(torch.rand(1, 3, 4, 16, 16))
    with pytest.raises(InputError, match=r"takes clips / volumes \(B, C, T, H, W\).*got a 4-D input"):
        camkit.GradCAM(tiny3d())(torch.rand(1, 3, 16, 16))
    with pytest.raises(InputError, match="aug_smooth"):
        camkit.GradCAM(tiny3d(), aug_smooth=True)(torch.rand(1, 3, 4, 16, 16))


def test_clip_shorter_than_the_temporal_kernel_names_the_layer():
    net = nn.Sequential(nn.Conv3d(3, 4, (5, 3, 3)), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(InputError, match=r"T×H×W = 3×16×16.*'0' \(Conv3d, kernel \(5, 3, 3\)\).*3×16×16"):
        camkit.GradCAM(net, layer="2")(torch.rand(1, 3, 3, 16, 16))
    assert camkit.GradCAM(net, layer="2")(torch.rand(1, 3, 5, 16, 16)).shape == (1, 5, 16, 16)


# ---- peers -----------------------------------------------------------------------------------------

tv_video = pytest.importorskip("torchvision.models.video")


def r3d() -> nn.Module:
    torch.manual_seed(0)
    return tv_video.r3d_18(weights=None).eval()


def test_pytorch_grad_cam_5d_agrees_up_to_its_resizing():
    """pytorch-grad-cam normalises the low-resolution map, then resizes it with scipy.ndimage.zoom (cubic
    spline, corner-aligned); camkit upsamples trilinearly (align_corners=False), then normalises."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = r3d()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 8, 32, 32)
    e = camkit.GradCAM(net, layer="layer3").explain(x)
    with pgc.GradCAM(model=net, target_layers=[net.layer3]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(e.targets[0]))])  # (1, T, H, W)
    assert theirs.shape == (1, 8, 32, 32)
    assert corr(e.maps, torch.from_numpy(theirs)) >= 0.95
    # their low-resolution map is ours: same formula before resizing
    assert e.raw[0].shape == (2, 4, 4)


def test_monai_gradcam_is_inverted_camkit():
    """MONAI's default post-processing maps (min, max) to (1, 0): its map is 1 - camkit's (same trilinear
    upsampling, align_corners=False), correlation -1."""
    monai_cam = pytest.importorskip("monai.visualize")
    net = r3d()
    x = torch.rand(1, 3, 4, 32, 32)
    ours = camkit.GradCAM(net, layer="layer3").explain(x)
    theirs = monai_cam.GradCAM(nn_module=net, target_layers="layer3")(x, class_idx=int(ours.targets[0]))
    assert theirs.shape == (1, 1, 4, 32, 32)
    theirs = torch.as_tensor(theirs)[:, 0].float()
    assert corr(ours.maps, theirs) < -0.999
    torch.testing.assert_close(1 - theirs, ours.maps, atol=1e-4, rtol=0)


# ---- every method on r3d_18 at 4x32^2 ----------------------------------------------------------------

R3D_FAST = {**FAST, "scorecam": {"batch_size": 256}, "sscam": {"samples": 1, "batch_size": 256},
            "iscam": {"samples": 1, "batch_size": 256}, "ablationcam": {"batch_size": 256}}


@pytest.fixture(scope="module")
def r3d_small():
    return r3d(), torch.rand(1, 3, 4, 32, 32)


@pytest.mark.parametrize("name", [n for n in list_methods() if 3 in get(n).grid_dims])
def test_every_method_on_r3d_18(name, r3d_small):
    net, x = r3d_small
    cls = get(name)
    layer = "layer2" if cls.expensive else "auto"  # 128 channels at 2x8x8, not 512 at layer4's 1x2x2
    e = cls(net, layer=layer, **R3D_FAST.get(name, {})).explain(x)
    spatial = e.maps.shape[-4:] if cls.output != "cam" else e.maps.shape[-3:]
    assert tuple(spatial)[-3:] == (4, 32, 32)
    assert torch.isfinite(e.maps).all()
