"""What an answer looks like on the wire: maps as PNG overlays, coloured heat maps and ``.npy``
(all base64), the model's top classes, and the JSON body of ``POST /explain`` built from them.

Overlays are drawn at the uploaded image's own size (shrunk only past :data:`DISPLAY_MAX_SIDE`);
the ``.npy`` is the map at the model's input size, as the library returns it. A method whose
``output`` is ``"attribution"`` is drawn as an RGB image (:func:`camkit.methods.to_image`), a
``"cam"`` map as a colour-mapped heat map.
"""
from __future__ import annotations

import base64
import io
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .. import viz
from ..data import resize_image
from ..methods import to_image
from .service import MapResult

DISPLAY_MAX_SIDE = 2048  # overlays are drawn at the image's own size, up to this many pixels per side


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def npy_bytes(a: torch.Tensor) -> bytes:
    """``a`` as float32 ``.npy`` file bytes (``numpy.load(io.BytesIO(...))`` reads it back)."""
    buf = io.BytesIO()
    np.save(buf, a.detach().cpu().numpy().astype(np.float32))
    return buf.getvalue()


def display_image(image: torch.Tensor) -> torch.Tensor:
    """The uploaded image, shrunk only when a side exceeds :data:`DISPLAY_MAX_SIDE`."""
    h, w = image.shape[-2:]
    scale = DISPLAY_MAX_SIDE / max(h, w)
    return image if scale >= 1 else resize_image(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def png_bytes(picture: Any) -> bytes:
    """A PIL image as PNG with fast compression (level 1: about 5x faster than the default on
    photos, files about 10 % larger)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_maps(image: torch.Tensor, maps: torch.Tensor, attribution: bool) -> tuple[bytes, bytes, bytes]:
    """PNG of the overlay (the coloured map blended at alpha 0.5 over the image, at the image's
    size, as :func:`camkit.viz.overlay` draws it), PNG of the coloured map alone (for the page's
    opacity slider), and the map's ``.npy`` bytes."""
    from PIL import Image

    h, w = image.shape[-2:]
    if attribution:
        pic = png_bytes(viz.to_pil(to_image(maps)).resize((w, h)))
        return pic, pic, npy_bytes(maps)
    heat = viz.heatmap(maps, size=(h, w))
    return png_bytes(Image.blend(viz.to_pil(image), heat, 0.5)), png_bytes(heat), npy_bytes(maps)


def top_classes(logits: Optional[torch.Tensor], categories: Optional[Sequence[str]], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes: ``{"index", "name", "score"}`` with softmax probabilities."""
    if logits is None or logits.dim() != 1:
        return []
    probs = logits.float().softmax(0)
    top = probs.topk(min(k, probs.numel()))
    return [{"index": int(i), "name": class_name(categories, int(i)), "score": float(v)}
            for v, i in zip(top.values, top.indices)]


def class_name(categories: Optional[Sequence[str]], i: int) -> str:
    return categories[i] if categories and 0 <= i < len(categories) else str(i)


def response_body(model: str, categories: Optional[Sequence[str]], image: torch.Tensor, names: list[str],
                  results: list[MapResult]) -> dict[str, Any]:
    """The JSON body of ``POST /explain`` for ``image``'s ``results`` (one per method of ``names``),
    without its timings."""
    shown = display_image(image)
    k = max(len(results[0].classes), 5)
    maps: dict[str, list[dict[str, Any]]] = {}
    for name, r in zip(names, results):
        maps[name] = []
        for j, c in enumerate(r.classes):
            png, heat, npy = encode_maps(shown, r.maps[j], r.output == "attribution")
            maps[name].append({"class": c, "name": class_name(categories, c), "png": b64(png), "heatmap": b64(heat),
                               "npy": b64(npy)})
    return {"model": model, "classes": top_classes(results[0].logits, categories, k), "maps": maps,
            "image": {"width": int(image.shape[-1]), "height": int(image.shape[-2])}}
