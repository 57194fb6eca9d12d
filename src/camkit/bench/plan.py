"""What to run: models x methods x images, cut into shards of work with stable keys.

A `Shard` is one model on a contiguous range of image indices (``kind="images"``), or one
model's figures (``kind="figures"``). Inside a shard the unit of work -- what is written, fsynced and
marked done together -- is ``(model, method, image range)``; its key is `unit_key`. Keys
depend only on the model spec, the method and the image indices, so a resumed run (or a remote
worker) computes exactly the same units the same way.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from ..errors import CamkitError
from ..methods import get, list_methods
from .config import BASELINE_PREFIX, BenchConfig

PREDICTIONS = "predictions"  # the unit of a shard's per-image predictions
FIGURES = "figures"


@dataclass(frozen=True)
class Shard:
    """One model on images ``[start, stop)`` with ``methods`` (baselines included as
    ``baseline:NAME``), or that model's figures. ``done`` holds the unit keys already in the store."""

    model: str
    kind: str  # "images" | "figures"
    start: int
    stop: int
    methods: tuple[str, ...]
    done: frozenset[str] = field(default_factory=frozenset)

    @property
    def key(self) -> str:
        return f"{self.model}|{self.kind}|{self.start}-{self.stop}"

    @property
    def size(self) -> int:
        """Images in the shard (what a progress bar counts)."""
        return self.stop - self.start if self.kind == "images" else 0

    def unit(self, method: str) -> str:
        return unit_key(self.model, method, self.start, self.stop)

    def units(self) -> list[str]:
        """Every unit key of the shard."""
        if self.kind == FIGURES:
            return [self.unit(FIGURES)]
        return [self.unit(PREDICTIONS)] + [self.unit(m) for m in self.methods]

    @property
    def complete(self) -> bool:
        return all(u in self.done for u in self.units())


def unit_key(model: str, method: str, start: int, stop: int) -> str:
    """The key of one unit of work: a method (or the predictions, or the figures) on an image range."""
    return f"unit|{model}|{method}|{start}-{stop}"


def record_key(model: str, method: str, image_id: str, kind: str) -> str:
    """The key of one result record: ``(model, method, image, target kind)``."""
    return f"{model}|{method}|{image_id}|{kind}"


def is_map_method(name: str) -> bool:
    """Methods whose ``output`` is a [0, 1] map (``"cam"``); attributions (Guided Backprop) are not."""
    return get(name).output == "cam"


LEFT_OUT = "left out: "  # how a run's note lists the methods --methods all left out ("; " between them)

_OUTPUTS = {
    "attribution": "signed pixel attributions, not [0, 1] maps (shown in the Guided Grad-CAM figure)",
    "concepts": "maps of concepts found in the activations, not of a class",
}


def leave_out_reason(name: str, task: str = "classification", include_expensive: bool = False) -> Optional[str]:
    """Why the benchmark's tables of ``task`` leave method ``name`` out (None: they keep it; the text has
    no ";", which separates the reasons in a run's note), read from its attributes: ``output`` other than ``"cam"``, ``tasks`` without ``task``, or ``expensive`` (kept
    when ``include_expensive``)."""
    cls = get(name)
    if cls.output != "cam":
        what = _OUTPUTS.get(cls.output, f"output kind {cls.output!r}")
        return f"{name}: output={cls.output!r}, {what}, so the map metrics do not apply"
    if task not in cls.tasks:
        return f"{name}: designed for {', '.join(cls.tasks) or 'no target task'} (tasks), not {task}"
    if cls.expensive and not include_expensive:
        return f"{name}: expensive ({cls.cost.replace(';', ',')}), add --include-expensive or name it in --methods"
    return None


def select_methods(spec: Iterable[str] | str, include_expensive: bool = False,
                   task: str = "classification") -> tuple[tuple[str, ...], list[str]]:
    """(methods to run, one line per registered method left out and why). ``"all"``: every registered
    method whose `leave_out_reason` is None; named methods run even when expensive, and a named
    method the tables cannot hold is an error saying why."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        reasons = {m: leave_out_reason(m, task, include_expensive) for m in list_methods()}
        return tuple(m for m, r in reasons.items() if r is None), [r for r in reasons.values() if r is not None]
    out: list[str] = []
    for n in names:
        canonical = get(n).name  # raises a readable error for unknown names
        reason = leave_out_reason(canonical, task, include_expensive=True)
        if reason is not None:
            raise CamkitError(f"cannot benchmark {reason}")
        if canonical not in out:
            out.append(canonical)
    return tuple(out), []


def resolve_methods(spec: Iterable[str] | str, include_expensive: bool = False) -> tuple[str, ...]:
    """``"all"`` -> every registered method the classification tables hold (expensive ones only with
    ``include_expensive``); else the names, canonicalised by the registry. See `select_methods`."""
    return select_methods(spec, include_expensive)[0]


def make_plan(config: BenchConfig, n_images: int, done: frozenset[str] = frozenset()) -> list[Shard]:
    """Shards of ``config.batch_size`` images per model (then one figures shard per model), skipping
    shards whose every unit is in ``done``. ``n_images`` is the dataset's size before ``limit``."""
    n = n_images if config.limit is None else min(n_images, config.limit)
    methods = tuple(config.methods) + tuple(BASELINE_PREFIX + b for b in config.protocol.baselines)
    shards = []
    for model in config.models:
        for start in range(0, n, config.batch_size):
            stop = min(start + config.batch_size, n)
            shards.append(Shard(model, "images", start, stop, methods))
        if config.figure_images > 0 and n > 0:
            shards.append(Shard(model, FIGURES, 0, min(n, config.figure_images), tuple(config.methods)))
    shards = [Shard(s.model, s.kind, s.start, s.stop, s.methods, frozenset(u for u in s.units() if u in done))
              for s in shards]
    return [s for s in shards if not s.complete]
