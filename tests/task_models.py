"""Small detection and segmentation models whose maps can be computed by hand (tests of tasks)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign


class TinyBackbone(nn.Module):
    """Two strided convs (stride 4): the explained layer is ``backbone.feat`` (8 channels)."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(self.stem(x))


def tiny_detector(seed: int = 0, **kw) -> FasterRCNN:
    """A torchvision Faster R-CNN with a tiny backbone; 64 <= short side, long side <= 96, padding to 32."""
    torch.manual_seed(seed)
    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=4, sampling_ratio=2)
    opts = dict(min_size=64, max_size=96, box_score_thresh=0.0, box_detections_per_img=4,
                rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=20, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    opts.update(kw)
    return FasterRCNN(TinyBackbone(), num_classes=3, rpn_anchor_generator=anchors, box_roi_pool=pool, **opts).eval()


class Out:
    """A Hugging Face style output object."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class ToySeg(nn.Module):
    """conv (stride 4) + ReLU -> ``feat`` (the explained layer) -> 1x1 conv ``head`` -> logits at 1/4 size.

    ``S = sum_ij m_ij z[c]_ij = sum_ij m_ij (W[c] . A_ij + b_c)``, so ``dS/dA_cij = W[c, c'] m_ij`` and the
    Grad-CAM weights are ``W[cls] * mean_ij m_ij`` (head weights x the mask's share of the grid).
    """

    def __init__(self, channels: int = 5, classes: int = 3, kind: str = "tensor", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feat = nn.Sequential(nn.Conv2d(3, channels, 4, stride=4), nn.ReLU())
        self.head = nn.Conv2d(channels, classes, 1)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        z = self.head(self.feat(x))
        return {"out": z} if self.kind == "dict" else Out(z) if self.kind == "object" else z


class Encoder(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor):
        a = self.a(x)
        b = self.b(a)
        return (a, b) if self.kind == "tuple" else {"low": a, "high": b}


class KeyedNet(nn.Module):
    """``encoder`` returns ``(a, b)`` (or ``{"low": a, "high": b}``); the head pools both and adds them."""

    def __init__(self, kind: str = "tuple") -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder = Encoder(kind)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        a, b = out if isinstance(out, tuple) else (out["low"], out["high"])
        return self.fc(torch.cat([a.mean((2, 3)), (b * b).mean((2, 3))], 1))
