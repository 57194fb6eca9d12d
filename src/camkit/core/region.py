"""Where the input image lies in a layer's grid, for models that resize and pad their input inside.

A torchvision detector (Faster/Mask R-CNN, RetinaNet, FCOS, SSD) passes its input through a
``GeneralizedRCNNTransform``: each image is resized to ``(h', w')`` and the batch is padded at the
bottom and right to ``(Hp, Wp)``. Every layer after it sees the padded image, so its grid covers
``[0, Hp) x [0, Wp)`` and the input image is the sub-rectangle ``[0, h'/Hp] x [0, w'/Wp]`` of it (in
fractions of the grid's extent). An `InputRegion` holds that rectangle per image and samples a
grid map inside it at the input's pixel centres: pixel ``(i, j)`` of an ``(H, W)`` input reads the
grid at ``y = y0 + (i + 0.5) / H * (y1 - y0)`` (same for ``x``), bilinearly -- i.e. upsampling to the
padded size, cropping the padding and resizing to the input, in one interpolation. With the whole
grid as rectangle this is exactly bilinear upsampling (``align_corners=False``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import Hooks


@dataclass(frozen=True)
class InputRegion:
    """``rects`` ``(B, 4)``: per image ``(y0, x0, y1, x1)``, the input's extent in fractions of the grid;
    ``padded``: the size of the image the layers see, ``(Hp, Wp)`` (layer grids are strides of it)."""

    rects: torch.Tensor
    padded: tuple[int, int]

    def select(self, rows: torch.Tensor) -> "InputRegion":
        """The region of a batch made of images ``rows``."""
        return InputRegion(self.rects[rows.to(self.rects.device)], self.padded)

    def resample(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Grid maps ``(B, ..., h, w)`` -> ``(B, ..., H, W)`` in the input's frame (see the module doc)."""
        b, lead, (h, w) = maps.shape[0], maps.shape[1:-2], maps.shape[-2:]
        big, wide = size
        r = self.rects.to(maps.device, torch.float32)
        ys = (torch.arange(big, device=maps.device, dtype=torch.float32) + 0.5) / big
        xs = (torch.arange(wide, device=maps.device, dtype=torch.float32) + 0.5) / wide
        gy = r[:, 0, None] + ys[None] * (r[:, 2] - r[:, 0])[:, None]  # (B, H) in [0, 1] of the grid
        gx = r[:, 1, None] + xs[None] * (r[:, 3] - r[:, 1])[:, None]  # (B, W)
        grid = torch.stack([gx[:, None, :].expand(-1, big, -1), gy[:, :, None].expand(-1, -1, wide)], dim=-1)
        flat = maps.reshape(b, -1, h, w).float()
        out = F.grid_sample(flat, grid * 2 - 1, mode="bilinear", padding_mode="border", align_corners=False)
        return out.reshape(b, *lead, big, wide)


def _is_resizing_transform(m: nn.Module) -> bool:
    return any(c.__name__ == "GeneralizedRCNNTransform" for c in type(m).__mro__)


def _region_of(out: Any) -> Optional[InputRegion]:
    """The region described by a ``GeneralizedRCNNTransform`` output ``(ImageList, targets)``."""
    images = out[0] if isinstance(out, tuple) and out else out
    tensors, sizes = getattr(images, "tensors", None), getattr(images, "image_sizes", None)
    if not isinstance(tensors, torch.Tensor) or not sizes:
        return None
    hp, wp = tensors.shape[-2:]
    rects = torch.tensor([[0.0, 0.0, h / hp, w / wp] for h, w in sizes])
    return None if bool((rects[:, 2:] == 1).all()) else InputRegion(rects, (int(hp), int(wp)))


@contextmanager
def input_region(model: nn.Module) -> Iterator[Callable[[], Optional[InputRegion]]]:
    """Watch the model's resizing transform during a block; yields a function returning the region of
    the first forward in the block (None when the model has no such transform or does not pad)."""
    seen: list[Optional[InputRegion]] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        if not seen:
            seen.append(_region_of(out))

    with Hooks() as hooks:  # they fire for this call only, not for other threads using the model
        for m in model.modules():
            if _is_resizing_transform(m):
                hooks.on_forward(m, hook)
        yield lambda: seen[0] if seen else None
