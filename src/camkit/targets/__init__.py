"""What to explain: the score whose map a method computes.

Modules, one idea each: `.classes` (class targets -- ``None`` for top-1, an int, one int per
image, ``TopK``/``BottomK``, a callable -- and `resolve_targets`, which turns any spec into
the scores of one forward), `.per_image` (one callable per image, pytorch-grad-cam's habit),
`.segmentation` (a class's logits summed over a mask), `.detection` (the scores of a
detector's predictions matching given boxes), `.rest` (ReST: a class's logit plus its
log-probability, ShapleyCAM's paper), `.contrast` (a class's logit minus those of its most
similar classes: Finer-CAM's target). Segmentation, Detection, ReST and Contrast are `RowTarget`\\ s:
targets that hold something per image and score an output row by row.
"""
from .classes import BottomK, RowTarget, ScoreFn, TargetSpec, Targets, TopK, resolve_targets
from .contrast import Contrast
from .detection import Detection
from .per_image import PerImage
from .rest import ReST
from .segmentation import Segmentation

__all__ = [
    "TopK", "BottomK", "RowTarget", "TargetSpec", "Targets", "ScoreFn", "resolve_targets",
    "PerImage", "Segmentation", "Detection", "ReST", "Contrast",
]
