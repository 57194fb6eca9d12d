"""What the server computes, apart from HTTP: targets, the served methods, batched explanations.

A request asks one model for maps of one image by several methods; it becomes one job per method.
Jobs of the same model, method and kind of target are batched (`camkit.serve.batching`):
their images, resized to the model's input size as ``camkit explain`` does, go through one
``explain`` call, so several requests share one forward. An image's maps do not depend on the
other images of its batch (eval mode), so each answer equals the library's call on that image
alone, up to float rounding. Decoding the upload is `.decoding`'s, turning the answers
into PNG and ``.npy`` `.encoding`'s.

A target is ``top1`` / ``topK``, a class index in ASCII digits, or a class name (case-insensitive,
close names suggested on a miss). A server may serve some methods only (an allow-list); which
queue a method's jobs wait in follows its class's declared ``expensive`` attribute.
"""
from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence, Union

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


INDEX_DIGITS = 9  # a class index has at most this many digits (no int() of a 5,000-digit string)


def parse_target(text: str, num_classes: Optional[int], categories: Optional[Sequence[str]] = None) -> Target:
    """``top1`` / ``topK`` / a class index (ASCII digits, 0 <= index < num_classes) / a class name
    of ``categories`` (see `class_index`)."""
    s = text.strip().lower()
    if m := re.fullmatch(r"top([0-9]+)", s):
        k = int(m.group(1)) if len(m.group(1)) <= 3 else MAX_K + 1
        if not 1 <= k <= MAX_K or (num_classes is not None and k > num_classes):
            raise BadRequest(422, f"target {text!r}: K must be between 1 and {min(MAX_K, num_classes or MAX_K)}")
        return Target(k=k)
    if re.fullmatch(r"[0-9]+", s):
        if len(s) > INDEX_DIGITS or (num_classes is not None and int(s) >= num_classes):
            shown = s if len(s) <= 12 else f"{s[:12]}... ({len(s)} digits)"
            raise BadRequest(422, f"target class {shown} is out of range: the model has "
                                  + (f"{num_classes} classes (0..{num_classes - 1})" if num_classes else "fewer classes"))
        return Target(index=int(s))
    if s.isdigit():  # digits of another script: int() would read them
        raise BadRequest(422, f"target {text!r}: a class index is written in the digits 0-9")
    if categories:
        return Target(index=class_index(text, categories))
    raise BadRequest(422, f"target must be top1, topK (K <= {MAX_K}) or a class index, got {text!r}")


def class_index(text: str, categories: Sequence[str]) -> int:
    """The class named ``text`` (case and repeated spaces ignored): a class's full name, else one of
    its comma-separated synonyms (``"tabby cat"`` of ``"tabby, tabby cat"``); a name of several
    classes or of none is a `BadRequest` naming the candidates or the closest names."""
    want = " ".join(text.split()).lower()
    synonyms = [[p.strip().lower() for p in c.split(",")] for c in categories]
    found = [i for i, c in enumerate(categories) if c.lower() == want] or [
        i for i, names in enumerate(synonyms) if want in names]
    if len(found) == 1:
        return found[0]
    if found:
        raise BadRequest(422, f"target {text!r} names {len(found)} classes: "
                              f"{', '.join(f'{i} ({categories[i]})' for i in found)}; give the index")
    index = {n: i for i, names in reversed(list(enumerate(synonyms))) for n in names}
    close = difflib.get_close_matches(want, list(index), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(f'{c!r} (class {index[c]})' for c in close)}?" if close else ""
    raise BadRequest(422, f"target must be top1, topK (K <= {MAX_K}), a class index or a class name of the model, "
                          f"got {text!r}.{hint} GET /models/NAME/classes lists the names.")


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
    """The served models and methods (``methods``: an allow-list of names, None: all), one
    instance of each method per model (calls are thread-safe)."""

    def __init__(self, models: dict[str, nn.Module], device: Union[str, torch.device] = "cpu",
                 methods: Optional[Sequence[str]] = None) -> None:
        self.models = models
        self.device = torch.device(device)
        self.served = list_methods() if methods is None else list(dict.fromkeys(get(n).name for n in methods))
        if not self.served:
            raise CamkitError("serve at least one method (camkit serve --methods gradcam,...)")
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
        """Comma-separated method names -> canonical names (unknown ones -> `BadRequest`)."""
        names = [t.strip() for t in text.split(",") if t.strip()]
        if not names:
            raise BadRequest(422, f"methods is empty; give one or more of: {', '.join(self.served)}")
        out = []
        for n in names:
            try:
                out.append(get(n).name)
            except CamkitError as e:
                raise BadRequest(422, str(e)) from e
            if out[-1] not in self.served:
                raise BadRequest(422, f"method {out[-1]!r} is not served here (camkit serve --methods); this server "
                                      f"serves: {', '.join(self.served)}")
        return list(dict.fromkeys(out))

    @staticmethod
    def expensive(method: str) -> bool:
        """Whether ``method``'s class declares itself ``expensive`` (its jobs wait in their own queue)."""
        return bool(get(method).expensive)

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
        """One batched ``explain`` for jobs of one key (see `job_key`)."""
        model, method, kind, k = key  # type: ignore[misc]
        start = time.perf_counter()
        x = torch.stack([it.x for it in items]).to(self.device)
        targets: Any = TopK(k) if kind == "top" else torch.tensor([[it.target.index] for it in items])
        cam = self._cam(model, method)
        e = cam.explain(x, targets=None if cam.output == "concepts" else targets)  # DFF: concepts, no target
        maps = e.maps.detach().float().cpu()
        classes = e.targets.reshape(len(items), -1).tolist() if e.targets is not None else [[] for _ in items]
        logits = None if e.logits is None else e.logits.detach().float().cpu()
        took = time.perf_counter() - start
        return [MapResult(maps[i], classes[i], None if logits is None else logits[i], took, e.output)
                for i in range(len(items))]
