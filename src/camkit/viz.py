"""Pictures of explanations: a map over an image, signed attributions, grids; all return PIL images.

>>> camkit.viz.overlay(image, maps[0]).save("cat.png")      # image (3, H, W) in [0, 1], map (h, w)

Everything takes torch tensors (any device) or numpy arrays; nothing here needs a display
(colour maps come from matplotlib's registry, no figure is opened).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import InputError

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = ["overlay", "heatmap", "attribution", "to_pil", "grid", "encode", "draw_boxes"]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _hwc(image: ArrayLike) -> np.ndarray:
    """(3, H, W) tensor, (H, W, 3) array or (H, W), floats in [0, 1] -> (H, W, 3) float32 in [0, 1].

    Tensors are read channels-first (torch convention); numpy arrays channels-last unless their
    last axis cannot be channels."""
    a = _np(image)
    if a.ndim == 3 and (isinstance(image, torch.Tensor) or a.shape[-1] not in (1, 3)):
        a = np.transpose(a, (1, 2, 0))
    elif a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise InputError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {tuple(_np(image).shape)}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a, 0.0, 1.0)


def to_pil(image: ArrayLike) -> Image.Image:
    """An image in [0, 1] ((3, H, W), (H, W, 3) or (H, W)) as an RGB PIL image."""
    return Image.fromarray((_hwc(image) * 255 + 0.5).astype(np.uint8), mode="RGB")


def _map2d(m: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to ``size`` = (H, W), clipped to [0, 1]."""
    a = _np(m)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise InputError(f"a map must be 2-D (h, w), got shape {tuple(_np(m).shape)}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    if a.shape != size:
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        a = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(a, 0.0, 1.0)


def _colormap(values: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps[cmap](values)[..., :3].astype(np.float32)


def heatmap(m: ArrayLike, cmap: str = "jet", size: Optional[tuple[int, int]] = None) -> Image.Image:
    """A map in [0, 1] coloured with ``cmap`` (resized to ``size`` = (H, W) when given)."""
    a = _np(m).squeeze()
    a = _map2d(a, size or (int(a.shape[-2]), int(a.shape[-1])))
    return to_pil(_colormap(a, cmap))


def overlay(image: ArrayLike, m: ArrayLike, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """The map (resized bilinearly to the image) coloured with ``cmap`` and blended over the image:
    ``(1 - alpha) * image + alpha * colour(map)``."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    img = _hwc(image)
    heat = _colormap(_map2d(m, img.shape[:2]), cmap)
    return to_pil((1 - alpha) * img + alpha * heat)


def attribution(a: ArrayLike, percentile: float = 99.0) -> Image.Image:
    """A signed (3, H, W) attribution (Guided Backprop, Guided Grad-CAM) as an image: 0.5 grey is zero,
    values scaled by the ``percentile`` of their absolute value (so a few outliers do not wash it out)."""
    x = _np(a)
    if x.ndim == 2:
        x = x[None]
    scale = float(np.percentile(np.abs(x), percentile)) if x.size else 0.0
    x = x / scale if scale > 0 else np.zeros_like(x)
    return to_pil(np.clip(0.5 + 0.5 * x, 0.0, 1.0))


def draw_boxes(image: Image.Image, boxes: ArrayLike, colour: str = "#00ff00", width: int = 2) -> Image.Image:
    """A copy of ``image`` with ``(N, 4)`` boxes ``x0, y0, x1, y1`` (x1, y1 exclusive) drawn on it."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in _np(boxes).reshape(-1, 4).tolist():
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
    return out


def grid(images: Sequence[Image.Image], cols: int, pad: int = 2, background: str = "white") -> Image.Image:
    """Images pasted in rows of ``cols`` cells (cell = the largest image), ``pad`` pixels apart."""
    if not images:
        raise InputError("grid needs at least one image")
    if cols < 1:
        raise InputError(f"cols must be >= 1, got {cols}")
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out.paste(im.convert("RGB"), (pad + c * (cw + pad), pad + r * (ch + pad)))
    return out


def encode(image: Image.Image, fmt: str = "PNG", max_side: Optional[int] = None, quality: int = 88) -> bytes:
    """``image`` encoded as PNG/JPEG bytes, first shrunk so that its longer side is <= ``max_side``."""
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    if fmt.upper() in ("JPG", "JPEG"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt.upper())
    return buf.getvalue()
