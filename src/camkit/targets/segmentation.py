"""Segmentation targets: the sum of a class's logits over a mask.

``S_b = sum_ij m_bij * z_b[c_b, i, j]`` with ``z`` the model's ``(B, classes, h, w)`` logits, ``c_b`` the
explained class of image ``b`` and ``m_b`` the mask: the pixels the model assigns to ``c_b``
(``argmax_c z_b[c] == c_b``) when none is given, else the given mask (bool or float weights).
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TargetError
from .classes import RowTarget

ClassSpec = Union[int, Sequence[int], Sequence[Sequence[int]], torch.Tensor]
MaskSpec = Union[None, torch.Tensor, np.ndarray]


def segmentation_logits(output: Any) -> torch.Tensor:
    """The ``(B, classes, h, w)`` logits of a segmentation output: a tensor, a dict's ``"out"`` (torchvision)
    or ``"logits"``, or an object's ``.logits`` (Hugging Face)."""
    z = output
    if isinstance(output, dict):
        z = output.get("out", output.get("logits"))
    elif not isinstance(output, torch.Tensor):
        z = getattr(output, "logits", None)
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(output).__name__
        raise TargetError(
            "Segmentation targets need (B, classes, H, W) logits: a tensor, a dict with 'out' (torchvision) or "
            f"'logits', or an object with .logits (Hugging Face); got {got}"
        )
    return z


def _class_table(cls: ClassSpec, batch: int) -> tuple[torch.Tensor, bool]:
    """Classes as a ``(B, K)`` long tensor, and whether K is kept (K classes per image were given)."""
    if isinstance(cls, bool) or (isinstance(cls, torch.Tensor) and cls.dtype == torch.bool):
        raise TargetError(f"Segmentation class must be an int class index, got {cls!r}")
    if isinstance(cls, int):
        return torch.full((batch, 1), cls, dtype=torch.long), False
    try:
        t = torch.as_tensor(cls)
    except (TypeError, ValueError) as e:
        raise TargetError(f"Segmentation class must be an int, B ints or (B, K) ints; got {cls!r}") from e
    if t.is_floating_point() or t.dim() not in (1, 2) or t.shape[0] != batch:
        raise TargetError(
            f"Segmentation class must be one int, a list of one class per image ({batch}) or (B, K) classes; "
            f"got shape {tuple(t.shape)}"
        )
    return t.long().reshape(batch, -1), t.dim() == 2


def _resize_mask(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, K, H, W)`` float masks at ``size``: area-averaged when shrinking (the share of each output
    pixel the mask covers), nearest when growing. The aspect ratio must match to within a pixel."""
    mh, mw = m.shape[-2:]
    h, w = size
    if (mh, mw) == (h, w):
        return m
    if abs(mh * w / mw - h) > 1 or abs(mw * h / mh - w) > 1:
        raise TargetError(
            f"Segmentation mask of size {(mh, mw)} does not match the model output's {(h, w)} and has another "
            "aspect ratio; give the mask at the input's or the output's resolution"
        )
    flat = m.reshape(-1, 1, mh, mw)
    mode = "area" if mh >= h and mw >= w else "nearest"
    return F.interpolate(flat, size=(h, w), mode=mode).reshape(*m.shape[:2], h, w)


def _mask_table(mask: Any, batch: int, k: int, size: tuple[int, int]) -> torch.Tensor:
    """A given mask as ``(B, K, h, w)`` float weights at the output's resolution."""
    m = torch.as_tensor(mask) if not isinstance(mask, torch.Tensor) else mask.detach()
    m = m.float()
    if m.dim() == 2:
        m = m.expand(batch, *m.shape)
    if m.dim() == 3:
        m = m.unsqueeze(1).expand(-1, k, -1, -1)
    if m.dim() != 4 or m.shape[0] != batch or m.shape[1] != k:
        raise TargetError(
            f"Segmentation mask must be (H, W), (B, H, W) or (B, K, H, W) for a batch of {batch} with {k} "
            f"class(es) per image; got shape {tuple(m.shape)}"
        )
    if not bool(torch.isfinite(m).all()):
        raise TargetError("Segmentation mask contains NaN or infinite values")
    return _resize_mask(m, size)


class Segmentation(RowTarget):
    """Explain class ``cls`` of a segmentation model: score = sum of its logits over ``mask``.

    ``cls``: one int for every image, a list of one class per image, or ``(B, K)`` classes (K maps per
    image, maps ``(B, K, H, W)``). ``mask``: None (the pixels the model assigns to the class, frozen
    from the explained forward so that perturbation methods score the same pixels), or a bool/float
    ``(H, W)``, ``(B, H, W)`` or ``(B, K, H, W)`` mask, resized to the output's resolution when it
    differs (e.g. Hugging Face SegFormer logits at 1/4 of the input). Outputs: ``(B, classes, H, W)``
    tensors, dicts with ``"out"`` (torchvision), objects with ``.logits`` (Hugging Face).

    After resolution (``Explanation.target``) ``classes`` is ``(B, K)`` and ``masks`` ``(B, K, h, w)``.
    """

    def __init__(self, cls: ClassSpec, mask: MaskSpec = None) -> None:
        self.cls, self.mask = cls, mask
        self.classes: Optional[torch.Tensor] = None  # (B, K) once resolved
        self.masks: Optional[torch.Tensor] = None  # (B, K, h, w) once resolved

    @classmethod
    def each(cls, classes: Optional[Sequence[int]] = None) -> RowTarget:
        """One map per class in one forward: ``classes`` for every image, or (None) every class the model
        predicts somewhere in the image; images with fewer classes get all-zero maps in the extra slots
        (``classes`` -1 there)."""
        return _EachClass(None if classes is None else [int(c) for c in classes])

    @classmethod
    def _resolved(cls, classes: torch.Tensor, masks: torch.Tensor, keep_k: bool) -> "Segmentation":
        out = cls(classes, masks)
        out.classes, out.masks, out.keep_k = classes, masks, keep_k
        return out

    def __len__(self) -> int:
        if self.classes is None:
            raise TargetError("Segmentation target used before it was resolved against the model output")
        return self.classes.shape[0]

    def resolve(self, output: Any, batch: int) -> "Segmentation":
        if self.classes is not None:
            return self
        z = segmentation_logits(output)
        if z.shape[0] != batch:
            raise TargetError(f"the model output has batch size {z.shape[0]} but the input has {batch}")
        classes, keep_k = _class_table(self.cls, batch)
        n = z.shape[1]
        bad = (classes < 0) | (classes >= n)
        if bool(bad.any()):
            raise TargetError(
                f"Segmentation class {int(classes[bad][0])} is out of range: the model has {n} classes (0..{n - 1})"
            )
        size = (z.shape[-2], z.shape[-1])
        if self.mask is None:
            masks = predicted_masks(z, classes.to(z.device))
        else:
            masks = _mask_table(self.mask, batch, classes.shape[1], size)
        return Segmentation._resolved(classes.to(z.device), masks.to(z.device), keep_k)

    def __call__(self, output: Any) -> torch.Tensor:
        classes, masks = self.classes, self.masks
        if classes is None or masks is None:
            raise TargetError("Segmentation target used before it was resolved against the model output")
        z = segmentation_logits(output)
        if z.shape[0] != classes.shape[0]:
            if z.shape[0] != 1:
                raise TargetError(f"output of {z.shape[0]} images scored against targets of {classes.shape[0]}")
            z = z.expand(classes.shape[0], -1, -1, -1)  # one output scored against every image's target
        if tuple(z.shape[-2:]) != tuple(masks.shape[-2:]):
            raise TargetError(f"output of size {tuple(z.shape[-2:])} scored against masks of {tuple(masks.shape[-2:])}")
        idx = classes.clamp_min(0).to(z.device)[..., None, None].expand(-1, -1, *z.shape[-2:])
        return (z.gather(1, idx) * masks.to(z.device, z.dtype)).sum(dim=(-2, -1))

    def rows(self, rows: Sequence[int]) -> "Segmentation":
        assert self.classes is not None and self.masks is not None
        r = torch.as_tensor(list(rows), dtype=torch.long, device=self.classes.device)
        return Segmentation._resolved(self.classes[r], self.masks[r], self.keep_k)


def predicted_masks(z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``(B, K, h, w)`` float masks of the pixels where ``argmax z == classes[b, k]`` (classes -1: none).
    Warns for a class the model predicts nowhere in an image (its score is 0, its map empty)."""
    pred = z.detach().argmax(1, keepdim=True)  # (B, 1, h, w)
    masks = (pred == classes[..., None, None]).to(z.dtype)
    empty = (masks.flatten(2).sum(-1) == 0) & (classes >= 0)
    for b, k in empty.nonzero().tolist():
        warnings.warn(
            f"Segmentation: the model assigns no pixel of image {b} to class {int(classes[b, k])}, so its score "
            "is 0 and its map empty; pass mask= to explain a region", UserWarning, stacklevel=5,
        )
    return masks


class _EachClass(RowTarget):
    """``Segmentation.each``: resolves to a Segmentation with one column per class."""

    def __init__(self, classes: Optional[list[int]]) -> None:
        self.classes = classes
        self.keep_k = True

    def resolve(self, output: Any, batch: int) -> Segmentation:
        z = segmentation_logits(output)
        if self.classes is not None:
            return Segmentation([self.classes] * batch).resolve(output, batch)
        pred = z.detach().argmax(1)
        present = [torch.unique(pred[b]).tolist() for b in range(z.shape[0])]
        k = max(len(p) for p in present)
        table = torch.tensor([p + [-1] * (k - len(p)) for p in present], dtype=torch.long, device=z.device)
        return Segmentation._resolved(table, predicted_masks(z, table), True)
