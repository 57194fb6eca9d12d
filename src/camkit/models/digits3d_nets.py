"""Small 3-D conv nets for the generated clips and volumes (`camkit.data.digits3d`), 10 classes.

Both are ``stem -> layer1 -> layer2 -> layer3 -> avgpool -> fc`` with ``Conv3d - BatchNorm3d - ReLU``
stages (torchvision's ``r3d_18`` naming; ``layer3`` is the last grid, the default CAM layer):

- `MovingDigitsNet`: clips ``(B, 3, 8, 32, 32)`` -> stem 16 @ 8x16x16 (stride 1x2x2) -> 24 @ 4x8x8
  -> 32 @ 4x8x8 -> 48 @ 4x8x8;
- `DigitVolumesNet`: volumes ``(B, 1, 32, 32, 32)`` -> stem 12 @ 16³ -> 24 @ 8³ -> 32 @ 8³ -> 48 @ 8³.

Inputs are pixels (voxels) in [0, 1], normalised inside as ``(x - 0.5) / 0.25``. Each carries the
attributes camkit reads from a model: ``input_size`` ``(T, H, W)`` / ``(D, H, W)``, ``grid_dims = 3``,
``default_layer``, ``categories``, ``task``, ``in_channels``.
"""
from __future__ import annotations

from torch import Tensor, nn

from camkit.core.pixels import check_range

CATEGORIES_3D = [str(d) for d in range(10)]
MEAN, STD = 0.5, 0.25


def _stage(in_ch: int, out_ch: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm3d(out_ch),
                         nn.ReLU(inplace=False))


class Digits3DNet(nn.Module):
    """``stem``, ``layer1..3`` (``Conv3d 3³ - BN - ReLU`` each), global average pooling, ``fc``."""

    task = "classification"
    grid_dims = 3

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int], strides: tuple[tuple[int, int, int], ...],
                 input_size: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _stage(in_channels, widths[0], strides[0])
        self.layer1 = _stage(widths[0], widths[1], strides[1])
        self.layer2 = _stage(widths[1], widths[2], strides[2])
        self.layer3 = _stage(widths[2], widths[3], strides[3])
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.in_channels = in_channels
        self.input_size = input_size
        self.default_layer = "layer3"
        self.categories = list(CATEGORIES_3D)

    def preprocess(self, x: Tensor) -> Tensor:
        """``(x - 0.5) / 0.25``."""
        return (x - MEAN) / STD

    def forward_preprocessed(self, t: Tensor) -> Tensor:  # noqa: D102
        h = self.layer3(self.layer2(self.layer1(self.stem(t))))
        return self.fc(self.avgpool(h).flatten(1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        check_range(x, self)
        return self.forward_preprocessed(self.preprocess(x))


class MovingDigitsNet(Digits3DNet):
    """Clips ``(B, 3, 8, 32, 32)`` of `camkit.data.digits3d.MovingDigits`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(3, (16, 24, 32, 48), ((1, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1)), (8, 32, 32), num_classes)


class DigitVolumesNet(Digits3DNet):
    """Volumes ``(B, 1, 32, 32, 32)`` of `camkit.data.digits3d.DigitVolumes`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(1, (12, 24, 32, 48), ((2, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1)), (32, 32, 32), num_classes)


DIGITS3D_ARCHITECTURES: dict[str, type[Digits3DNet]] = {
    "moving_digits_net": MovingDigitsNet,
    "digit_volumes_net": DigitVolumesNet,
}
