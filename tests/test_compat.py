"""`camkit.compat` against the peers themselves: pytorch-grad-cam's and torchcam's call signatures give
the peers' maps (ResNet-18, random weights, 64x64 inputs; a token model through ``reshape_transform``),
and pytorch-grad-cam's ``show_cam_on_image`` picture."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camkit import compat
from camkit.errors import InputError

pgc = pytest.importorskip("pytorch_grad_cam")
tc_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.image import show_cam_on_image as pgc_show  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PgcTarget  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


PGC_PAIRS = [("GradCAM", "GradCAM"), ("GradCAMPlusPlus", "GradCAMPlusPlus"), ("XGradCAM", "XGradCAM"),
             ("LayerCAM", "LayerCAM"), ("HiResCAM", "HiResCAM"), ("GradCAMElementWise", "GradCAMElementWise")]


@pytest.mark.parametrize("ours,theirs", PGC_PAIRS)
def test_pytorch_grad_cam_signature_gives_its_maps(resnet, x, ours, theirs):
    layers = [resnet.layer3, resnet.layer4] if ours == "GradCAM" else [resnet.layer4]  # several layers: fused as pgc
    targets = [3, 7]
    with getattr(pgc, theirs)(model=resnet, target_layers=layers) as peer:
        expected = peer(input_tensor=x, targets=[PgcTarget(c) for c in targets])
    with getattr(compat, ours)(model=resnet, target_layers=layers) as cam:
        got = cam(input_tensor=x, targets=[compat.ClassifierOutputTarget(c) for c in targets])
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (2, 64, 64)
    # Grad-CAM++: pgc adds 1e-7 to alpha's denominator, camkit takes the exact closed form
    assert np.abs(got - expected).max() < (1e-2 if ours == "GradCAMPlusPlus" else 1e-4), (ours, np.abs(got - expected).max())
    assert cam.outputs.shape == (2, 10)


def test_pytorch_grad_cam_signature_top1_and_callable_targets(resnet, x):
    with pgc.GradCAM(model=resnet, target_layers=[resnet.layer4]) as peer:
        expected = peer(input_tensor=x, targets=None)
    got = compat.GradCAM(model=resnet, target_layers=[resnet.layer4])(input_tensor=x)
    assert np.abs(got - expected).max() < 1e-4
    # any callable of one image's output row, as pgc's targets are
    got = compat.GradCAM(resnet, [resnet.layer4])(x, targets=[lambda row: row[3] - row[4]] * 2)
    with pgc.GradCAM(resnet, [resnet.layer4]) as peer:
        expected = peer(x, targets=[lambda row: row[3] - row[4]] * 2)
    assert np.abs(got - expected).max() < 1e-4


class TokenNet(nn.Module):
    """Patch embedding -> tokens ``(B, 1 + 16, 8)`` (a class token first) -> a block -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.embed = nn.Conv2d(3, 8, 16, stride=16)
        self.cls = nn.Parameter(torch.randn(1, 1, 8, generator=g))
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.block(torch.cat([self.cls.expand(len(t), -1, -1), t], 1))
        return self.head(t.mean(1))


def reshape_transform(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's ViT recipe
    return t[:, 1:].reshape(len(t), 4, 4, t.shape[-1]).permute(0, 3, 1, 2)


def test_reshape_transform_as_pytorch_grad_cam(x):
    model = TokenNet().eval()
    with pgc.GradCAM(model=model, target_layers=[model.block], reshape_transform=reshape_transform) as peer:
        expected = peer(input_tensor=x, targets=[PgcTarget(1), PgcTarget(2)])
    got = compat.GradCAM(model=model, target_layers=[model.block], reshape_transform=reshape_transform)(
        input_tensor=x, targets=[compat.ClassifierOutputTarget(1), compat.ClassifierOutputTarget(2)])
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("name", ["GradCAM", "XGradCAM", "LayerCAM"])
def test_torchcam_extractor_style_gives_its_maps(resnet, x, name):
    with getattr(tc_methods, name)(resnet, target_layer=["layer3", "layer4"]) as extractor:
        out = resnet(x)
        expected = extractor([3, 7], out)
    with getattr(compat.torchcam, name)(resnet, target_layer=["layer3", "layer4"]) as cam_extractor:
        out = resnet(x)
        cams = cam_extractor([3, 7], out)
    assert [c.shape for c in cams] == [(2, 4, 4), (2, 2, 2)]
    for got, exp in zip(cams, expected):
        assert (got - exp).abs().max() < 1e-4, (name, (got - exp).abs().max())
    assert not resnet._forward_pre_hooks and not resnet._forward_hooks  # hooks gone on exit


def test_torchcam_gradcampp_and_smooth_gradcampp(resnet, x):
    """torchcam 0.5's `GradCAMpp` never divides alpha (it divides a boolean-masked copy), so its
    weights are `sum g^2 relu(g)`; its `SmoothGradCAMpp` divides: with one sample of negligible noise
    it is Grad-CAM++, which both of camkit's give."""
    with tc_methods.SmoothGradCAMpp(resnet, target_layer="layer4", num_samples=1, std=1e-6) as extractor:
        expected = extractor(5, resnet(x))[0]
    for extractor_class, kw in ((compat.torchcam.GradCAMpp, {}), (compat.SmoothGradCAMpp, {"num_samples": 1, "std": 1e-6})):
        with extractor_class(resnet, target_layer="layer4", **kw) as cam_extractor:
            got = cam_extractor(5, resnet(x))[0]
        assert (got - expected).abs().max() < 1e-3, (extractor_class, (got - expected).abs().max())
    with compat.SmoothGradCAMpp(resnet, "layer3", num_samples=4, std=0.5) as cam_extractor:
        noisy = cam_extractor(5, resnet(x))[0]
    with compat.SmoothGradCAMpp(resnet, "layer3", num_samples=1, std=1e-6) as cam_extractor:
        expected = cam_extractor(5, resnet(x))[0]
    assert (noisy - expected).abs().max() > 1e-3  # the noise is drawn


def test_torchcam_extractor_needs_a_forward_first(resnet):
    cam_extractor = compat.torchcam.GradCAM(resnet, "layer4")
    with pytest.raises(InputError, match="run the model on your input first"):
        cam_extractor(1)
    cam_extractor.remove_hooks()
    assert not resnet._forward_pre_hooks
    with pytest.raises(InputError, match="does not take"):
        compat.torchcam.GradCAM(resnet, "layer4", alpha=2)
    with pytest.raises(InputError, match="non-empty list of modules"):
        compat.GradCAM(resnet, resnet.layer4)


def test_show_cam_on_image_as_pytorch_grad_cam():
    rng = np.random.default_rng(0)
    img = rng.random((40, 50, 3), dtype=np.float32)
    mask = np.outer(np.linspace(0, 1, 40), np.linspace(1, 0, 50)).astype(np.float32)
    for use_rgb in (True, False):
        ours, theirs = compat.show_cam_on_image(img, mask, use_rgb=use_rgb), pgc_show(img, mask, use_rgb=use_rgb)
        assert ours.dtype == np.uint8 and ours.shape == theirs.shape == (40, 50, 3)
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16, (diff.mean(), diff.max())  # matplotlib's jet vs OpenCV's
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        compat.show_cam_on_image(img * 255, mask)
