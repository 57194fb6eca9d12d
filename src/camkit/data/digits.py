"""A generated localisation set with exact boxes: scikit-learn's 8x8 digits on cluttered canvases.

Each image is a ``size x size`` RGB canvas: a dark, smooth, slightly tinted background with pixel
noise, thin grey distractor strokes and blobs, then one digit (or, for a share of images, two
instances of the same digit) pasted in a light, slightly tinted colour. A digit is an 8x8 ``load_digits`` image scaled by 2.25-3.5x,
slightly rotated and stretched; its ink (``alpha = clip(1.4 * v / 16, 0, 1)``, values below 0.1
set to 0) is alpha-blended onto the canvas. Boxes are the *tight ink boxes* (every pixel with
``alpha > 0`` is inside, each box edge touches ink); ``Sample.mask`` is the ink alpha. Outside the
ink the image equals the background exactly (digits are pasted last).

Splits use disjoint source digits: ``"train"`` the even ``load_digits`` indices, ``"test"`` the odd
ones. Item ``i`` depends only on ``(seed, i, size, split)``: the same arguments give identical
tensors.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, overload

import numpy as np
import torch

from camkit.data.sample import Sample

Split = Literal["train", "test", "all"]
NUM_CLASSES = 10
CATEGORIES = [str(d) for d in range(NUM_CLASSES)]


@lru_cache(maxsize=1)
def _source_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the digits set is built from scikit-learn's bundled digits: pip install scikit-learn") from exc
    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


class GeneratedSet(Sequence[Sample]):
    """A generated set of ``n`` items, item ``i`` made by ``_item(i)`` (``0 <= i < n``); slices give lists."""

    n: int

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...
    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        return self._item(i % self.n)

    def _item(self, i: int) -> Sample:
        raise NotImplementedError


class DigitsDataset(GeneratedSet):
    """``n`` generated images; see the module docstring for how they are made."""

    def __init__(self, n: int, seed: int = 0, size: int = 64, split: Split = "test",
                 two_share: float = 0.2, scale: tuple[float, float] = (2.25, 3.5)) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if size < 40:
            raise ValueError(f"size must be >= 40 pixels to hold two scaled digits, got {size}")
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if not 0.0 <= two_share <= 1.0:
            raise ValueError(f"two_share must be in [0, 1], got {two_share}")
        self.n, self.seed, self.size, self.split = n, seed, size, split
        self.two_share, self.scale = two_share, scale
        self.categories = CATEGORIES
        self._images, self._by_class = source_digits(split)

    def _item(self, i: int) -> Sample:
        return self.render(i)[0]

    def render(self, i: int) -> tuple[Sample, torch.Tensor]:
        """Item ``i`` and the background it was pasted on (``(3, H, W)``, identical off the ink)."""
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        i %= self.n
        rng = np.random.default_rng([self.seed, i, self.size, ("train", "test", "all").index(self.split)])
        canvas = self._background(rng)
        background = canvas.copy()
        label = int(rng.integers(NUM_CLASSES))
        count = 2 if rng.random() < self.two_share else 1
        sources = rng.choice(self._by_class[label], size=count, replace=False)
        boxes: list[list[float]] = []
        mask = np.zeros((self.size, self.size), np.float32)
        for src in sources:
            placed = self._paste(rng, canvas, mask, self._images[src], boxes)
            if placed is not None:
                boxes.append(placed)
        sample = Sample(
            image=torch.from_numpy(canvas.transpose(2, 0, 1).copy()),
            label=label,
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            id=f"digits-{self.split}-{self.seed}-{i}",
            box_labels=torch.full((len(boxes),), label, dtype=torch.long),
            mask=torch.from_numpy(mask),
        )
        return sample, torch.from_numpy(background.transpose(2, 0, 1).copy())

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Dark grey canvas: level + ramp + smooth blotches + pixel noise, then thin strokes and blobs."""
        from PIL import Image, ImageDraw

        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(-0.12, 0.12)
        coarse = rng.normal(0, 0.05, (5, 5)).astype(np.float32)
        blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((s, s), Image.BILINEAR))
        img = rng.uniform(0.05, 0.3) + ramp + blotch + rng.normal(0, 0.04, (s, s))
        for _ in range(int(rng.integers(2, 6))):
            layer = Image.new("L", (s, s), 0)
            draw = ImageDraw.Draw(layer)
            x0, y0 = rng.uniform(0, s, 2)
            if rng.random() < 0.7:  # a thin straight or bent stroke
                pts = [(float(x0), float(y0))]
                for _ in range(int(rng.integers(1, 3))):
                    pts.append((float(np.clip(pts[-1][0] + rng.normal(0, s / 4), 0, s)),
                                float(np.clip(pts[-1][1] + rng.normal(0, s / 4), 0, s))))
                draw.line(pts, fill=255, width=1)
            else:  # a small blob
                r = rng.uniform(1.5, 3.5)
                draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=255)
            a = np.asarray(layer, np.float32) / 255 * rng.uniform(0.3, 0.7)
            img = img * (1 - a) + rng.uniform(0.4, 0.9) * a
        tint = rng.uniform(0.75, 1.0, 3).astype(np.float32)
        return np.clip(img[..., None] * tint, 0, 1).astype(np.float32)

    def _glyph(self, rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
        return glyph(rng, digit, self.scale)

    def _paste(self, rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray,
               digit: np.ndarray, taken: list[list[float]]) -> list[float] | None:
        """Blend one glyph onto ``canvas`` away from ``taken`` boxes; return its tight box."""
        s = self.size
        for _ in range(50):
            alpha = self._glyph(rng, digit)
            gh, gw = alpha.shape
            if gh > s - 2 or gw > s - 2:
                continue
            y0 = int(rng.integers(1, s - gh))
            x0 = int(rng.integers(1, s - gw))
            box = [float(x0), float(y0), float(x0 + gw), float(y0 + gh)]
            gap = 2
            if any(box[0] < t[2] + gap and t[0] < box[2] + gap and box[1] < t[3] + gap and t[1] < box[3] + gap
                   for t in taken):
                continue
            region = canvas[y0:y0 + gh, x0:x0 + gw]
            colour = rng.uniform(0.7, 1.0) * rng.uniform(0.8, 1.0, 3).astype(np.float32)
            a = alpha[..., None]
            canvas[y0:y0 + gh, x0:x0 + gw] = region * (1 - a) + colour * a
            mask[y0:y0 + gh, x0:x0 + gw] = np.maximum(mask[y0:y0 + gh, x0:x0 + gw], alpha)
            return box
        return None


def glyph(rng: np.random.Generator, digit: np.ndarray, scale: tuple[float, float], rotate: float = 12.0) -> np.ndarray:
    """An 8x8 digit (values in [0, 1]) as ink alpha: scaled by ``U(scale)`` (height x U(0.9, 1.1), width
    x U(0.85, 1.05)), rotated by ``U(-rotate, rotate)`` degrees, ``alpha = clip(1.4 v, 0, 1)`` with values
    below 0.1 set to 0, cropped to its tight ink box."""
    from PIL import Image

    lo, hi = scale
    factor = rng.uniform(lo, hi)
    h = int(round(8 * factor * rng.uniform(0.9, 1.1)))
    w = int(round(8 * factor * rng.uniform(0.85, 1.05)))
    im = Image.fromarray(digit, mode="F").resize((w, h), Image.BILINEAR)
    im = im.rotate(float(rng.uniform(-rotate, rotate)), resample=Image.BILINEAR, expand=True)
    alpha = np.clip(np.asarray(im, np.float32) * 1.4, 0, 1)
    alpha[alpha < 0.1] = 0.0
    rows, cols = np.nonzero(alpha.any(1))[0], np.nonzero(alpha.any(0))[0]
    return alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def source_digits(split: Split) -> tuple[np.ndarray, list[np.ndarray]]:
    """The 8x8 source digits (values in [0, 1]) and, per class, the indices of ``split``'s digits
    (``"train"``: even indices of ``load_digits``, ``"test"``: odd, ``"all"``: every one)."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, targets = _source_digits()
    idx = np.arange(len(targets))
    if split != "all":
        idx = idx[idx % 2 == (0 if split == "train" else 1)]
    return images, [idx[targets[idx] == c] for c in range(NUM_CLASSES)]


def digits(n: int = 1000, seed: int = 0, size: int = 64, split: Split = "test",
           two_share: float = 0.2) -> DigitsDataset:
    """``n`` generated digit images of ``size x size`` pixels (see `camkit.data.digits`)."""
    return DigitsDataset(n, seed=seed, size=size, split=split, two_share=two_share)
