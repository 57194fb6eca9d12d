"""One annotated image (`Sample`), resizing image and boxes together, and batching."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Sample:
    """An image with its class label(s) and boxes.

    - ``image``: float ``(3, H, W)`` in [0, 1];
    - ``label``: the class index, or a list of indices when an image has several classes;
    - ``boxes``: float ``(N, 4)``, ``x0, y0, x1, y1`` in pixels, ``x1``/``y1`` exclusive
      (a box covering pixel columns 3..5 is ``x0=3, x1=6``);
    - ``id``: a string unique within its dataset;
    - ``box_labels``: optional ``(N,)`` long tensor, the class of each box;
    - ``mask``: optional float ``(H, W)`` in [0, 1], the object's exact pixels where known
      (the digit ink of the generated set).

    The generated 3-D sets (`camkit.data.digits3d`) use the same record one axis up: ``image``
    ``(C, D, H, W)`` (a clip's D is its frames), ``boxes`` ``(N, 6)`` as ``x0, y0, z0, x1, y1, z1``,
    ``mask`` ``(D, H, W)``; they are generated at their nets' size, so `resized` is for images only.
    """

    image: Tensor
    label: int | list[int]
    boxes: Tensor
    id: str
    box_labels: Tensor | None = None
    mask: Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def labels(self) -> list[int]:
        """The label(s) as a list."""
        return list(self.label) if isinstance(self.label, list) else [int(self.label)]

    def resized(self, size: tuple[int, int], interpolation: str = "bilinear") -> "Sample":
        """A copy at ``size = (H, W)``: antialiased image (see `resize_image`), boxes scaled by
        ``W'/W, H'/H``. The aspect ratio is not kept (no crop), so every box stays inside the image.
        """
        h, w = self.size
        nh, nw = int(size[0]), int(size[1])
        if (nh, nw) == (h, w):
            return self
        image = resize_image(self.image, (nh, nw), interpolation)
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=self.boxes.dtype)
        mask = None
        if self.mask is not None:
            mask = resize_image(self.mask[None].expand(1, -1, -1), (nh, nw))[0]
        return replace(self, image=image, boxes=self.boxes * scale, mask=mask)


def resize_image(image: Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> Tensor:
    """Antialiased resize of a ``(C, H, W)`` image, clamped to [0, 1]: bicubic when ``interpolation``
    is ``"bicubic"`` (a model's preprocessing, e.g. timm's ``pretrained_cfg``), bilinear otherwise."""
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"
    out = F.interpolate(image[None].float(), size=size, mode=mode, antialias=True, align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def batches(
    dataset: Iterable[Sample], size: tuple[int, int], batch_size: int = 16
) -> Iterator[tuple[Tensor, list[Sample]]]:
    """Yield ``(images, samples)``: ``images`` is ``(B, 3, H, W)`` at ``size``, ``samples`` the
    resized samples (boxes in the resized pixel frame). The last batch may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk: list[Sample] = []
    for sample in dataset:
        chunk.append(sample.resized(size))
        if len(chunk) == batch_size:
            yield torch.stack([s.image for s in chunk]), chunk
            chunk = []
    if chunk:
        yield torch.stack([s.image for s in chunk]), chunk
