"""What an answer looks like on the wire: maps as PNG overlays, coloured heat maps and ``.npy``
(all base64), the model's top classes, and the JSON body of ``POST /explain`` built from them.

Overlays are drawn at the decoded image's size (the upload's own size, reduced past
`.decoding.MAX_SIDE` pixels per side); the ``.npy`` is the map at the model's input size,
as the library returns it. A method whose ``output`` is ``"attribution"`` is drawn as an RGB image
(`camkit.methods.to_image`), a ``"cam"`` map as a colour-mapped heat map.

The request's ``format`` picks the parts of each map (`MAP_FORMATS`): ``all`` (the default:
overlay, heat map and float32 ``.npy``), ``png`` (the two PNGs) or ``float16`` (a float16 ``.npy``
alone, the smallest). The body is built map by map; past the server's answer cap it is refused
(413, with the size ``float16`` would take), and the request's deadline is checked between maps.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .. import viz
from ..methods import to_image
from .service import BadRequest, MapResult

#: the request's ``format`` -> the parts of each map in the answer
MAP_FORMATS = {"all": ("png", "heatmap", "npy"), "png": ("png", "heatmap"), "float16": ("npy",)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def npy_bytes(a: torch.Tensor, dtype: Any = np.float32) -> bytes:
    """``a`` as ``.npy`` file bytes of ``dtype`` (``numpy.load(io.BytesIO(...))`` reads it back)."""
    buf = io.BytesIO()
    np.save(buf, a.detach().cpu().numpy().astype(dtype))
    return buf.getvalue()


def png_bytes(picture: Any) -> bytes:
    """A PIL image as PNG with fast compression (level 1: about 5x faster than the default on
    photos, files about 10 % larger)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_map(image: torch.Tensor, map_: torch.Tensor, attribution: bool, fmt: str) -> dict[str, str]:
    """One map's parts for ``fmt`` (`MAP_FORMATS`), base64: ``png`` the overlay (the coloured map
    blended at alpha 0.5 over the image, at the image's size, as `camkit.viz.overlay` draws
    it), ``heatmap`` the coloured map alone (for the page's opacity slider), ``npy`` the map's
    ``.npy`` (float32, or float16 for ``fmt="float16"``)."""
    from PIL import Image

    parts: dict[str, str] = {}
    if "png" in MAP_FORMATS[fmt]:
        h, w = image.shape[-2:]
        if attribution:
            parts["png"] = parts["heatmap"] = b64(png_bytes(viz.to_pil(to_image(map_)).resize((w, h))))
        else:
            colour = viz.heatmap(map_, size=(h, w))
            parts["png"] = b64(png_bytes(Image.blend(viz.to_pil(image), colour, 0.5)))
            parts["heatmap"] = b64(png_bytes(colour))
    if "npy" in MAP_FORMATS[fmt]:
        parts["npy"] = b64(npy_bytes(map_, np.float16 if fmt == "float16" else np.float32))
    return parts


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


def float16_size(results: list[MapResult]) -> int:
    """Bytes of the maps of ``results`` as ``format=float16`` sends them (base64 ``.npy``, 128-byte headers)."""
    return sum(4 * math.ceil((128 + 2 * r.maps[0].numel()) / 3) * len(r.classes) for r in results)


def response_body(model: str, categories: Optional[Sequence[str]], image: torch.Tensor, size: tuple[int, int],
                  names: list[str], results: list[MapResult], fmt: str = "all", max_bytes: Optional[int] = None,
                  check: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The JSON body of ``POST /explain`` for the decoded ``image`` (the file's own ``size``
    ``(width, height)``) and its ``results`` (one per method of ``names``), without its timings.
    ``check()`` runs before each map (the request's deadline); past ``max_bytes`` of maps, 413."""
    k = max(len(results[0].classes), 5)
    maps: dict[str, list[dict[str, Any]]] = {}
    total, count = 0, sum(len(r.classes) for r in results)
    for name, r in zip(names, results):
        maps[name] = []
        for j, c in enumerate(r.classes):
            check()
            parts = encode_map(image, r.maps[j], r.output == "attribution", fmt)
            total += sum(len(v) for v in parts.values())
            if max_bytes is not None and total > max_bytes:
                smaller = "" if fmt == "float16" else f"format=float16 (about {float16_size(results) / 2**20:.1f} MB), "
                raise BadRequest(413, f"the answer would be larger than this server's cap of {max_bytes / 2**20:.3g} MB "
                                      f"(camkit serve --max-response-mb): {count} maps of a {image.shape[-1]}x"
                                      f"{image.shape[-2]} image; ask for {smaller}fewer methods or classes, or send a "
                                      "smaller image")
            maps[name].append({"class": c, "name": class_name(categories, c), **parts})
    return {"model": model, "classes": top_classes(results[0].logits, categories, k), "maps": maps,
            "image": {"width": int(size[0]), "height": int(size[1])}}
