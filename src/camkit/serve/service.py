"""What the server computes, apart from HTTP: targets, decoded images, batched explanations.

A request asks one model for maps of one image by several methods; it becomes one job per method.
Jobs of the same model, method and kind of target are batched (:mod:`camkit.serve.batching`):
their images, resized to the model's input size as ``camkit explain`` does, go through one
``explain`` call, so several requests share one forward. An image's maps do not depend on the
other images of its batch (eval mode), so each answer equals the library's call on that image
alone, up to float rounding. Turning the answers into PNG and ``.npy`` is :mod:`.encoding`'s.
"""
from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..targets import TopK
from ..data import resize_image
from ..errors import CamkitError
from ..methods import create, get, list_methods
from ..methods.base import BaseCAM

MAX_K = 10  # topK targets explain at most this many classes


class BadRequest(CamkitError):
    """A request the server cannot answer as asked (4xx), or not now (503 busy, 504 too slow):
    ``status`` is the HTTP status to answer with, ``headers`` go with it (``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class Target:
    """``top`` K classes, or one given class index ``index``."""

    k: int = 1
    index: Optional[int] = None

    @property
    def key(self) -> tuple[str, int]:
        return ("class", 1) if self.index is not None else ("top", self.k)


def parse_target(text: str, num_classes: Optional[int]) -> Target:
    """``top1`` / ``topK`` / a class index (0 <= index < num_classes)."""
    s = text.strip().lower()
    if m := re.fullmatch(r"top(\d+)", s):
        k = int(m.group(1))
        if not 1 <= k <= MAX_K or (num_classes is not None and k > num_classes):
            raise BadRequest(422, f"target {text!r}: K must be between 1 and {min(MAX_K, num_classes or MAX_K)}")
        return Target(k=k)
    if re.fullmatch(r"\d+", s):
        i = int(s)
        if num_classes is not None and i >= num_classes:
            raise BadRequest(422, f"target class {i} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
        return Target(index=i)
    raise BadRequest(422, f"target must be top1, topK (K <= {MAX_K}) or a class index, got {text!r}")


def decode_image(data: bytes, max_pixels: int) -> torch.Tensor:
    """An uploaded file as a ``(3, H, W)`` float tensor in [0, 1] (RGB), or :class:`BadRequest`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadRequest(413, f"the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; this server takes up to "
                                      f"{max_pixels / 1e6:.0f} megapixels")
            im.load()
            rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = "unknown file format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise BadRequest(415, f"the upload ({len(data)} bytes) is not an image Pillow can read (PNG, JPEG, BMP, GIF, "
                              f"TIFF, WebP ...): {why}") from e
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


@dataclass
class Item:
    """One image of a batched job, resized to the model's input size."""

    x: torch.Tensor
    target: Target


@dataclass
class MapResult:
    """One image's answer from one method: ``maps`` ``(K, H, W)`` (``(K, 3, H, W)`` when the
    method's ``output`` is ``"attribution"``), explained ``classes`` (K), the model's ``logits``
    (N), the job's run time and the method's ``output`` (``"cam"`` or ``"attribution"``)."""

    maps: torch.Tensor
    classes: list[int]
    logits: Optional[torch.Tensor]
    seconds: float
    output: str = "cam"


class Explainer:
    """The served models and one instance of each method per model (calls are thread-safe)."""

    def __init__(self, models: dict[str, nn.Module], device: Union[str, torch.device] = "cpu") -> None:
        self.models = models
        self.device = torch.device(device)
        self._cams: dict[tuple[str, str], BaseCAM] = {}

    def model(self, name: str) -> nn.Module:
        if name not in self.models:
            raise BadRequest(422, f"unknown model {name!r}; this server has: {', '.join(self.models)}")
        return self.models[name]

    def categories(self, name: str) -> Optional[list[str]]:
        return getattr(self.model(name), "categories", None)

    def num_classes(self, name: str) -> Optional[int]:
        cats = self.categories(name)
        return len(cats) if cats else getattr(self.model(name), "num_classes", None)

    def methods(self, text: str) -> list[str]:
        """Comma-separated method names -> canonical names (unknown ones -> :class:`BadRequest`)."""
        names = [t.strip() for t in text.split(",") if t.strip()]
        if not names:
            raise BadRequest(422, f"methods is empty; give one or more of: {', '.join(list_methods())}")
        out = []
        for n in names:
            try:
                out.append(get(n).name)
            except CamkitError as e:
                raise BadRequest(422, str(e)) from e
        return list(dict.fromkeys(out))

    def item(self, model: str, image: torch.Tensor, target: Target) -> Item:
        size = tuple(getattr(self.model(model), "input_size", image.shape[-2:]))
        return Item(resize_image(image, size), target)  # type: ignore[arg-type]

    def _cam(self, model: str, method: str) -> BaseCAM:
        key = (model, method)
        if key not in self._cams:  # a race creates two equal instances: harmless
            m = self.model(model)
            self._cams[key] = create(method, m, layer=getattr(m, "default_layer", "auto"))
        return self._cams[key]

    @staticmethod
    def job_key(model: str, method: str, target: Target) -> Hashable:
        return (model, method) + target.key

    def run(self, key: Hashable, items: list[Item]) -> list[MapResult]:
        """One batched ``explain`` for jobs of one key (see :meth:`job_key`)."""
        model, method, kind, k = key  # type: ignore[misc]
        start = time.perf_counter()
        x = torch.stack([it.x for it in items]).to(self.device)
        targets: Any = TopK(k) if kind == "top" else torch.tensor([[it.target.index] for it in items])
        e = self._cam(model, method).explain(x, targets=targets)
        maps = e.maps.detach().float().cpu()
        classes = e.targets.reshape(len(items), -1).tolist() if e.targets is not None else [[] for _ in items]
        logits = None if e.logits is None else e.logits.detach().float().cpu()
        took = time.perf_counter() - start
        return [MapResult(maps[i], classes[i], None if logits is None else logits[i], took, e.output)
                for i in range(len(items))]
