"""Datasets of :class:`Sample` objects (image in [0, 1], label(s), boxes ``x0, y0, x1, y1``, id).

- :func:`imagenet` — ILSVRC2012 validation images + VOC XML boxes;
- :func:`folder` — a folder of images + a JSON/CSV of boxes;
- :func:`samples` — real photos shipped inside installed packages, with our boxes;
- :func:`digits` — a generated localisation set with exact boxes;
- :func:`moving_digits`, :func:`digit_volumes` — generated clips and volumes with exact 3-D ground truth;
- :func:`batches` — ``(images (B, 3, H, W), samples)`` resized to a model's input size.

Modules: :mod:`.sample` (one annotated image, resizing, batching), :mod:`.files` (image files with
boxes, unreadable ones skipped and counted), :mod:`.imagenet`, :mod:`.folder`, :mod:`.photos`,
:mod:`.digits` (the datasets above), :mod:`.digits3d` (generated clips of moving digits and
volumes of extruded digits, exact 3-D ground truth), :mod:`.synsets` (ImageNet class ids and names),
:mod:`.imageio` (one image file -> tensor), :mod:`.geometry` (fitting an image to a model's input
and bringing maps back), :mod:`.video` (video files -> clips, animations; PyAV), :mod:`.volume`
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
