"""Small ResNet-, VGG- and ViT-style classifiers for the generated digits set (64x64 RGB, 10 classes).

Each mirrors the structure CAM methods expect from its full-size namesake:

- `DigitsResNet`: ``conv1/bn1/relu`` stem, ``layer1..layer4`` basic blocks (``layer4`` is the
  last spatial block, an 8x8 grid), global average pooling ``avgpool`` and one ``fc`` (plain CAM applies);
- `DigitsVGG`: a ``features`` Sequential (conv-BN-ReLU, max pools; the last ReLU
  ``features.20`` is 8x8), ``avgpool`` to 4x4 and a ``classifier`` Sequential;
- `DigitsViT`: a hybrid ViT, a small conv ``stem`` (64 -> 16 px) then ``patch_embed`` (``nn.Conv2d``,
  kernel = stride = 2, an 8x8 token grid, 8 input pixels per token), a class
  token prepended (1 prefix token), ``pos_embed``, pre-norm ``blocks.i`` (``norm1``, ``attn``,
  ``norm2``, ``mlp``) with batch-first ``(B, N, C)`` outputs, final ``norm`` and ``head`` on the class token.

Inputs are pixels in [0, 1], normalised inside as ``(x - 0.5) / 0.25``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from camkit.models.base import PixelModel

DIGITS_SIZE = 64
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.25, 0.25, 0.25)
DIGITS_CATEGORIES = [str(d) for d in range(10)]


class _DigitsModel(PixelModel):
    def _finish(self, default_layer: str) -> None:
        self.set_pixel_interface(mean=DIGITS_MEAN, std=DIGITS_STD, input_size=(DIGITS_SIZE, DIGITS_SIZE),
                                 default_layer=default_layer, categories=DIGITS_CATEGORIES)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))`` as in torchvision's ResNet."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.downsample(x))


class DigitsResNet(_DigitsModel):
    """64x64 -> stem 16 @32 -> 24 @32 -> 48 @16 -> 64 @8 -> 96 @8 -> GAP -> fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = BasicBlock(16, 24, 1)
        self.layer2 = BasicBlock(24, 48, 2)
        self.layer3 = BasicBlock(48, 64, 2)
        self.layer4 = BasicBlock(64, 96, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, num_classes)
        self._finish("layer4")

    def forward_preprocessed(self, t: Tensor) -> Tensor:  # noqa: D102
        h = self.relu(self.bn1(self.conv1(t)))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(torch.flatten(self.avgpool(h), 1))


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=False)]


class DigitsVGG(_DigitsModel):
    """``features``: [16] pool [32] pool [48 48] pool [64 64] (8x8); max pool -> 4x4 -> 128 -> classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        layers += _conv_bn_relu(3, 16) + [nn.MaxPool2d(2)]
        layers += _conv_bn_relu(16, 32) + [nn.MaxPool2d(2)]
        layers += _conv_bn_relu(32, 48) + _conv_bn_relu(48, 48) + [nn.MaxPool2d(2)]
        layers += _conv_bn_relu(48, 64) + _conv_bn_relu(64, 64)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.MaxPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 128), nn.ReLU(inplace=False), nn.Dropout(0.2), nn.Linear(128, num_classes)
        )
        self._finish(f"features.{len(layers) - 1}")

    def forward_preprocessed(self, t: Tensor) -> Tensor:  # noqa: D102
        return self.classifier(torch.flatten(self.avgpool(self.features(t)), 1))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, C)`` (``nn.MultiheadAttention``, batch first)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.mha(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(_DigitsModel):
    """Hybrid ViT: a conv ``stem`` (64 -> 16 px), ``patch_embed`` 2x2 -> an 8x8 grid of 64 tokens + a class
    token, ``depth`` pre-norm blocks, head on the class token.

    ``stem`` is ``conv3x3/2 - BN - ReLU - conv3x3/2 - BN - ReLU``; the patch embedding is the only
    convolution whose kernel equals its stride (2, in stem pixels; 8 input pixels per token side).
    """

    def __init__(self, num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: int = 2, stem: tuple[int, int] = (24, 48)) -> None:
        super().__init__()
        c1, c2 = stem
        grid = DIGITS_SIZE // 8
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=False),
            nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=False),
        )
        self.patch_embed = nn.Conv2d(c2, dim, kernel_size=2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.num_prefix_tokens = 1
        self._finish(f"blocks.{depth - 1}.norm1")

    def forward_preprocessed(self, t: Tensor) -> Tensor:  # noqa: D102
        tokens = self.patch_embed(self.stem(t)).flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.blocks(tokens + self.pos_embed)
        return self.head(self.norm(tokens)[:, 0])


DIGITS_ARCHITECTURES: dict[str, type[_DigitsModel]] = {
    "digits_resnet": DigitsResNet,
    "digits_vgg": DigitsVGG,
    "digits_vit": DigitsViT,
}
