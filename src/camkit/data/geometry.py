"""How an image becomes a model input, and how a map computed on that input goes back to the image.

A `Frame` records the geometry of one fit of an ``(H, W)`` image to a model's ``(h, w)``
input. In continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``) an image point ``X``
lands on the input at ``u = scale * X + offset``, per axis:

- ``stretch``: resize to ``(h, w)``, aspect ratio not kept (``scale = h / H, w / W``, offset 0);
- ``letterbox``: resize by ``s = min(h / H, w / W)`` and pad the rest with ``fill`` (centred);
- ``crop``: resize by ``s = max(h / H, w / W)`` and keep the centre ``(h, w)``.

`Frame.to_original` samples a map at ``u(X)`` for the centre of every image pixel
(bilinear), which for ``stretch`` is exactly a bilinear resize. Image points the input never saw
(outside a centre crop) get ``fill`` (default 0: no evidence).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .sample import resize_image

FitMode = Literal["stretch", "letterbox", "crop"]
FIT_MODES: tuple[str, ...] = ("stretch", "letterbox", "crop")


def _pair(size: tuple[int, int], what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"{what} must be positive, got {size!r}")
    return h, w


@dataclass(frozen=True)
class Frame:
    """The geometry of one fit: ``original`` ``(H, W)``, model input ``size`` ``(h, w)``, the resized
    image's size ``resized`` and where its top-left corner lands on the input (``offset``, negative
    for a crop)."""

    original: tuple[int, int]
    size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    mode: FitMode = "stretch"

    @classmethod
    def fit(cls, original: tuple[int, int], size: tuple[int, int], mode: FitMode = "stretch") -> "Frame":
        """The frame of fitting an ``original`` image to ``size`` with ``mode`` (see the module docstring)."""
        (oh, ow), (h, w) = _pair(original, "image size"), _pair(size, "input size")
        if mode == "stretch":
            return cls((oh, ow), (h, w), (h, w), (0, 0), mode)
        if mode not in FIT_MODES:
            raise InputError(f"fit mode must be one of {', '.join(FIT_MODES)}, got {mode!r}")
        s = min(h / oh, w / ow) if mode == "letterbox" else max(h / oh, w / ow)
        rh, rw = max(1, round(oh * s)), max(1, round(ow * s))
        if mode == "letterbox":
            rh, rw = min(rh, h), min(rw, w)
        else:
            rh, rw = max(rh, h), max(rw, w)
        return cls((oh, ow), (h, w), (rh, rw), ((h - rh) // 2, (w - rw) // 2), mode)

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: input pixels per image pixel."""
        return self.resized[0] / self.original[0], self.resized[1] / self.original[1]

    def image(self, image: Tensor, fill: float = 0.5, interpolation: str = "bilinear") -> Tensor:
        """The model input ``(C, h, w)`` of an image ``(C, H, W)`` in [0, 1] (antialiased ``interpolation``
        resize, bilinear or bicubic; letterbox padding = ``fill``)."""
        if tuple(image.shape[-2:]) != self.original:
            raise InputError(f"this frame fits images of size {self.original}, got {tuple(image.shape[-2:])}")
        resized = resize_image(image, self.resized, interpolation)
        (h, w), (top, left) = self.size, self.offset
        if self.mode == "letterbox":
            out = resized.new_full((resized.shape[0], h, w), fill)
            out[:, top:top + self.resized[0], left:left + self.resized[1]] = resized
            return out
        return resized[:, -top:-top + h, -left:-left + w] if self.mode == "crop" else resized

    def boxes(self, boxes: Tensor) -> Tensor:
        """Boxes ``(N, 4)`` ``x0, y0, x1, y1`` in image pixels -> input pixels."""
        sy, sx = self.scale
        top, left = self.offset
        b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return b * b.new_tensor([sx, sy, sx, sy]) + b.new_tensor([left, top, left, top])

    def to_original(self, maps: Tensor, fill: float = 0.0) -> Tensor:
        """Maps ``(..., h, w)`` on the model input -> ``(..., H, W)`` on the image (bilinear; image pixels
        the input did not show get ``fill``). Letterbox padding is never sampled."""
        if tuple(maps.shape[-2:]) != self.size:
            raise InputError(f"maps must have the input size {self.size} of this frame, got {tuple(maps.shape[-2:])}")
        lead = maps.shape[:-2]
        (rh, rw), (top, left) = self.resized, self.offset
        # the part of the input that shows the resized image, as a map of size (rh', rw')
        y0, x0 = max(top, 0), max(left, 0)
        part = maps.reshape(-1, 1, *self.size)[..., y0:y0 + rh, x0:x0 + rw].float()
        # centre of each image pixel, in that part's coordinates, normalised to [-1, 1]
        (oh, ow), (sy, sx) = self.original, self.scale
        ys = ((torch.arange(oh, device=maps.device) + 0.5) * sy + top - y0) / part.shape[-2] * 2 - 1
        xs = ((torch.arange(ow, device=maps.device) + 0.5) * sx + left - x0) / part.shape[-1] * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).expand(part.shape[0], -1, -1, -1)
        out = F.grid_sample(part, grid.to(part.dtype), mode="bilinear", padding_mode="border", align_corners=False)
        inside = (ys.abs() <= 1)[:, None] & (xs.abs() <= 1)[None, :]
        out = torch.where(inside, out, torch.full_like(out, fill))
        return out.reshape(*lead, oh, ow).to(maps.dtype)


def fit(image: Tensor, size: tuple[int, int], mode: FitMode = "stretch", fill: float = 0.5,
        interpolation: str = "bilinear") -> tuple[Tensor, Frame]:
    """``(input (C, h, w), frame)`` for an image ``(C, H, W)`` in [0, 1] fitted to ``size`` with ``mode``."""
    frame = Frame.fit((image.shape[-2], image.shape[-1]), size, mode)
    return frame.image(image, fill, interpolation), frame
