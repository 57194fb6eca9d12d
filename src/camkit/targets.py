"""What to explain: the score whose map a method computes.

- classification: ``None`` (top-1), an int, a list of one class per image, ``TopK(k)``, ``BottomK(k)``;
- segmentation: :class:`Segmentation` (a class's logits summed over a mask);
- detection: :class:`Detection` (the scores of the predictions matching given boxes) and
  ``Detection.each`` (one map per detection);
- anything else: a callable ``output -> (B,) scores``, or a :class:`RowTarget` subclass for targets
  that hold something per image.
"""
from __future__ import annotations

from .core.detection import Detection
from .core.segmentation import Segmentation
from .core.targets import BottomK, RowTarget, TargetSpec, TopK

__all__ = ["TopK", "BottomK", "Segmentation", "Detection", "RowTarget", "TargetSpec"]
