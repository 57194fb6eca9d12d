"""Datasets of `Sample` objects (image in [0, 1], label(s), boxes ``x0, y0, x1, y1``, id).

- `imagenet` — ILSVRC2012 validation images + VOC XML boxes;
- `folder` — a folder of images + a JSON/CSV of boxes;
- `samples` — real photos shipped inside installed packages, with our boxes;
- `digits` — a generated localisation set with exact boxes;
- `moving_digits`, `digit_volumes` — generated clips and volumes with exact 3-D ground truth;
- `batches` — ``(images (B, 3, H, W), samples)`` resized to a model's input size.

Modules: `.sample` (one annotated image, resizing, batching), `.files` (image files with
boxes, unreadable ones skipped and counted), `.imagenet`, `.folder`, `.photos`,
`.digits` (the datasets above), `.digits3d` (generated clips of moving digits and
volumes of extruded digits, exact 3-D ground truth), `.synsets` (ImageNet class ids and names),
`.imageio` (one image file -> tensor), `.geometry` (fitting an image to a model's input
and bringing maps back), `.video` (video files -> clips, animations; PyAV), `.volume`
(NIfTI volumes in, maps out aligned with the scan; nibabel).
"""
from __future__ import annotations

from camkit.data.digits import DigitsDataset, digits
from camkit.data.digits3d import DigitVolumes, MovingDigits, digit_volumes, moving_digits
from camkit.data.files import AnnotatedFiles
from camkit.data.folder import folder
from camkit.data.imagenet import imagenet
from camkit.data.photos import samples
from camkit.data.sample import Sample, batches, resize_image
from camkit.data.synsets import imagenet_categories, imagenet_wnids

__all__ = [
    "Sample", "batches", "resize_image", "digits", "DigitsDataset", "imagenet", "folder", "samples",
    "AnnotatedFiles", "imagenet_categories", "imagenet_wnids",
    "moving_digits", "MovingDigits", "digit_volumes", "DigitVolumes",
]
