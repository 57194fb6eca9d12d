"""Generated clips and volumes with exact ground truth, from scikit-learn's 8x8 digits.

`MovingDigits`: clips ``(3, T, S, S)`` (default 8 frames of 32x32): one digit (a glyph of
`camkit.data.digits.glyph`, 11-16 px) moving in a straight line at constant velocity from a
random start to a random end (at least half the free range away along one axis) (integer positions ``round(start + (end - start) · t / (T - 1))``) over
a dark, noisy background (static smooth blotches, fresh pixel noise every frame) with two static
grey distractor squares. The label is the digit. ``Sample.boxes`` are ``(T, 6)``: frame t's tight ink
box as ``(x0, y0, t, x1, y1, t + 1)``, so the union of the boxes is the digit's tube (the
``spatial_dims=3`` metrics read it directly); ``Sample.mask`` is the ink alpha ``(T, S, S)``.

`DigitVolumes`: volumes ``(1, S, S, S)`` (default 32³, one channel like a scan): one glyph
(13-19 px) extruded along D through ``U{6..14}`` slices at a random place, in noise (smooth
blotches + voxel noise) with two bright distractor spheres (radius 2) elsewhere. The label is the
digit; ``Sample.boxes`` is the exact 3-D box ``(x0, y0, z0, x1, y1, z1)``; ``Sample.mask`` the
extruded ink alpha ``(S, S, S)``.

Like `camkit.data.digits`: outside the ink every voxel equals the background (the digit is
pasted last), splits use disjoint source digits (``"train"`` even, ``"test"`` odd ``load_digits``
indices), and item ``i`` depends only on ``(seed, i, sizes, split)``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from camkit.data.digits import CATEGORIES, NUM_CLASSES, GeneratedSet, Split, glyph, source_digits
from camkit.data.sample import Sample

__all__ = ["MovingDigits", "DigitVolumes", "moving_digits", "digit_volumes"]


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, sigma: float) -> np.ndarray:
    """Smooth noise: a ``coarse``-per-axis normal grid (std ``sigma``) upsampled (bi/trilinear) to ``shape``."""
    low = torch.from_numpy(rng.normal(0, sigma, (coarse,) * len(shape)).astype(np.float32))[None, None]
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(low, size=shape, mode=mode, align_corners=False)[0, 0].numpy()


class _Generated(GeneratedSet):
    kind: Literal["clip", "volume"]
    _split_codes = ("train", "test", "all")

    def __init__(self, n: int, seed: int, split: Split) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n, self.seed, self.split = n, seed, split
        self.categories = CATEGORIES
        self._images, self._by_class = source_digits(split)

    def _item(self, i: int) -> Sample:
        return self._render(i, np.random.default_rng(self._key(i)))

    def _key(self, i: int) -> list[int]:
        raise NotImplementedError

    def _render(self, i: int, rng: np.random.Generator) -> Sample:
        raise NotImplementedError

    def _digit(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        label = int(rng.integers(NUM_CLASSES))
        return label, self._images[int(rng.choice(self._by_class[label]))]


class MovingDigits(_Generated):
    """``n`` clips of ``frames`` frames of ``size x size`` pixels (see the module docstring)."""

    kind = "clip"

    def __init__(self, n: int, seed: int = 0, size: int = 32, frames: int = 8, split: Split = "test",
                 scale: tuple[float, float] = (1.4, 2.0)) -> None:
        if size < 24:
            raise ValueError(f"size must be >= 24 pixels to hold a moving digit, got {size}")
        if frames < 2:
            raise ValueError(f"frames must be >= 2 for a digit to move, got {frames}")
        super().__init__(n, seed, split)
        self.size, self.frames, self.scale = size, frames, scale

    def _key(self, i: int) -> list[int]:
        return [self.seed, i, self.size, self.frames, self._split_codes.index(self.split), 3]

    def _render(self, i: int, rng: np.random.Generator) -> Sample:
        s, t_len = self.size, self.frames
        level = rng.uniform(0.05, 0.25)
        static = level + _smooth(rng, (s, s), 5, 0.05)
        for _ in range(2):  # static grey distractor squares
            r = int(rng.integers(2, 4))
            y, x = rng.integers(0, s - r, 2)
            static[y:y + r, x:x + r] = rng.uniform(0.4, 0.7)
        clip = np.clip(static[None] + rng.normal(0, 0.04, (t_len, s, s)), 0, 1).astype(np.float32)
        clip = np.repeat(clip[None], 3, axis=0) * rng.uniform(0.8, 1.0, (3, 1, 1, 1)).astype(np.float32)
        label, digit = self._digit(rng)
        alpha = glyph(rng, digit, self.scale)
        gh, gw = alpha.shape
        reach = np.array([s - gw + 1, s - gh + 1])
        start = rng.integers(0, reach)
        for _ in range(100):  # it moves at least half the free range along one axis
            end = rng.integers(0, reach)
            if np.abs(end - start).max() >= (reach.max() - 1) // 2:
                break
        colour = (rng.uniform(0.75, 1.0) * rng.uniform(0.85, 1.0, 3)).astype(np.float32)
        mask = np.zeros((t_len, s, s), np.float32)
        boxes = []
        for t in range(t_len):
            x, y = (int(round(float(v))) for v in start + (end - start) * t / (t_len - 1))
            a = alpha[None]
            region = clip[:, t, y:y + gh, x:x + gw]
            clip[:, t, y:y + gh, x:x + gw] = region * (1 - a) + colour[:, None, None] * a
            mask[t, y:y + gh, x:x + gw] = alpha
            boxes.append([x, y, t, x + gw, y + gh, t + 1])
        return Sample(image=torch.from_numpy(clip), label=label, boxes=torch.tensor(boxes, dtype=torch.float32),
                      id=f"moving-digits-{self.split}-{self.seed}-{i}",
                      box_labels=torch.full((t_len,), label, dtype=torch.long), mask=torch.from_numpy(mask))


class DigitVolumes(_Generated):
    """``n`` volumes of ``size³`` voxels, one channel (see the module docstring)."""

    kind = "volume"

    def __init__(self, n: int, seed: int = 0, size: int = 32, split: Split = "test",
                 scale: tuple[float, float] = (1.6, 2.4)) -> None:
        if size < 24:
            raise ValueError(f"size must be >= 24 voxels to hold an extruded digit, got {size}")
        super().__init__(n, seed, split)
        self.size, self.scale = size, scale

    def _key(self, i: int) -> list[int]:
        return [self.seed, i, self.size, self._split_codes.index(self.split), 4]

    def _render(self, i: int, rng: np.random.Generator) -> Sample:
        s = self.size
        vol = rng.uniform(0.05, 0.2) + _smooth(rng, (s, s, s), 4, 0.05) + rng.normal(0, 0.04, (s, s, s))
        label, digit = self._digit(rng)
        alpha = glyph(rng, digit, self.scale)
        gh, gw = alpha.shape
        depth = int(rng.integers(6, 15))
        z, y, x = (int(v) for v in rng.integers(0, [s - depth + 1, s - gh + 1, s - gw + 1]))
        box = [x, y, z, x + gw, y + gh, z + depth]
        zz, yy, xx = np.mgrid[0:s, 0:s, 0:s]
        placed = 0
        for _ in range(50):  # two bright spheres whose reach stays off the digit's box
            if placed == 2:
                break
            c = rng.uniform(2, s - 2, 3)
            if all(box[k] - 3 < c[2 - k] < box[k + 3] + 3 for k in range(3)):
                continue
            ball = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= 4.0
            vol[ball] = rng.uniform(0.6, 0.9)
            placed += 1
        vol = np.clip(vol, 0, 1).astype(np.float32)
        ink = np.broadcast_to(alpha, (depth, gh, gw))
        colour = rng.uniform(0.7, 1.0)
        region = vol[z:z + depth, y:y + gh, x:x + gw]
        vol[z:z + depth, y:y + gh, x:x + gw] = region * (1 - ink) + colour * ink
        mask = np.zeros((s, s, s), np.float32)
        mask[z:z + depth, y:y + gh, x:x + gw] = ink
        return Sample(image=torch.from_numpy(vol)[None], label=label, boxes=torch.tensor([box], dtype=torch.float32),
                      id=f"digit-volumes-{self.split}-{self.seed}-{i}",
                      box_labels=torch.tensor([label]), mask=torch.from_numpy(mask))


def moving_digits(n: int = 200, seed: int = 0, size: int = 32, frames: int = 8, split: Split = "test") -> MovingDigits:
    """``n`` generated clips of a moving digit (see `camkit.data.digits3d`)."""
    return MovingDigits(n, seed=seed, size=size, frames=frames, split=split)


def digit_volumes(n: int = 200, seed: int = 0, size: int = 32, split: Split = "test") -> DigitVolumes:
    """``n`` generated volumes of an extruded digit (see `camkit.data.digits3d`)."""
    return DigitVolumes(n, seed=seed, size=size, split=split)
