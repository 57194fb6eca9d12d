"""Re-running only the part of a model after a layer: Ablation-CAM's tail replay.

One normal forward is traced (`Tracer`): the tree of module calls, with the outputs of the
calls that end before the layer starts. A replay (`Plan.run`) then calls the model again
with those modules returning their cached outputs (image ``b``'s, expanded along the batch with no
copy), the layer returning a given batch (e.g. ablated copies of its output), and everything else
running -- so only the glue before the layer and the network after it compute.

The tracer's hooks and the replay's replaced forwards go through `camkit.core.hooks`: they act
only for the call that installed them, so other threads can use the same model meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ...core.engine import Pass
from ...core.hooks import Hooks
from ...core.keys import replace, split_key
from ...errors import UnsupportedModelError


@dataclass(eq=False)
class CallNode:
    """One call of a module during the traced forward (calls nest like the Python call stack)."""

    module: nn.Module
    start: int
    targets_before: int  # target calls started before this call started
    end: int = -1
    out: Any = None
    children: list["CallNode"] = field(default_factory=list)


class Tracer:
    """Forward pre-hooks and hooks on every module of the model, recording the tree of calls with
    the outputs of the calls that end before some target layer starts (the only ones a replay may
    take from the cache). The subtrees of calls during which no target started are dropped when the
    call ends: they are inside a call that is either cached or runs in full in every replay."""

    def __init__(self, targets: Sequence[nn.Module]) -> None:
        self.roots: list[CallNode] = []
        self.stack: list[CallNode] = []
        self.seq = 0
        self.started = 0
        self.n_targets = len(targets)
        self.target_index: dict[int, list[int]] = {}  # a module is several targets when keyed: "m[0]", "m[1]"
        for i, m in enumerate(targets):
            self.target_index.setdefault(id(m), []).append(i)
        self.target_calls: list[list[CallNode]] = [[] for _ in targets]

    def _pre(self, m: nn.Module, _args: Any) -> None:
        call = CallNode(m, self.seq, self.started)
        self.seq += 1
        (self.stack[-1].children if self.stack else self.roots).append(call)
        self.stack.append(call)
        for i in self.target_index.get(id(m), ()):
            self.target_calls[i].append(call)
            self.started += 1

    def _post(self, m: nn.Module, _args: Any, out: Any) -> None:
        while self.stack and self.stack[-1].module is not m:
            self.stack.pop()  # a call that raised and was caught by the model
        if not self.stack:
            return
        call = self.stack.pop()
        call.end = self.seq
        self.seq += 1
        if self.started == call.targets_before:
            call.children = []
        if self.started < self.n_targets or id(m) in self.target_index:  # a keyed target's container is replayed
            call.out = out

    def attach(self, hooks: Hooks, model: nn.Module) -> None:
        """Trace ``model``'s forwards in the call of ``hooks`` (until it exits)."""
        for m in model.modules():
            hooks.before_forward(m, self._pre)
            hooks.on_forward(m, self._post)

    def plan(self, i: int, name: str, tail: bool) -> "Plan":
        """What every module does in a replay that ablates target ``i``: return its cached output
        (calls that ended before the target started, outermost only), return the ablated batch (the
        target), or run (everything else). ``tail=False``: only the target is replaced."""
        calls = self.target_calls[i]
        if len(calls) != 1:
            raise UnsupportedModelError(
                f"Ablation-CAM replaces the output of layer {name!r}, which the forward calls {len(calls)} "
                "times; choose a layer that is called exactly once (e.g. its parent)"
            )
        target = calls[0]
        ablate = _Ablate(target.out, split_key(name)[1])
        actions: dict[int, tuple[nn.Module, list[Any]]] = {}

        def visit(call: CallNode) -> None:
            if call is target:
                act: Any = ablate
            elif tail and call.end < target.start:
                act = _Cached(call.out)
            else:
                act = _RUN
            actions.setdefault(id(call.module), (call.module, []))[1].append(act)
            if act is _RUN:
                for child in call.children:
                    visit(child)

        for root in self.roots:
            visit(root)
        return Plan([(m, acts) for m, acts in actions.values() if any(a is not _RUN for a in acts)])


@dataclass
class TracedPass(Pass):
    """An engine pass with the `Tracer` that watched it."""

    tracer: Optional[Tracer] = None


_RUN = object()


@dataclass(eq=False)
class _Cached:
    out: Any


@dataclass(eq=False)
class _Ablate:
    """The target call: its output in the traced pass and the keys of the explained element."""

    out: Any
    keys: tuple[str, ...]

    def output(self, replay: "Replay") -> Any:
        """The ablated batch, put back into (copies of) the layer's container output when keyed."""
        if not self.keys:
            return replay.ablated
        return replace(pick(self.out, replay.b, replay.batch, replay.n), self.keys, replay.ablated)


def pick(obj: Any, b: int, batch: int, n: int) -> Any:
    """Image ``b`` of a cached output, expanded (a view, no copy) to ``n`` copies along the batch
    dim (dim 0, or dim 1 for sequence-first tensors); tensors without a batch dim pass through."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() >= 1 and obj.shape[0] == batch:
            d = 0
        elif obj.dim() >= 2 and obj.shape[1] == batch:
            d = 1
        else:
            return obj
        one = obj.narrow(d, b, 1)
        shape = list(one.shape)
        shape[d] = n
        return one.expand(shape)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(pick(o, b, batch, n) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(pick(o, b, batch, n) for o in obj)
    if isinstance(obj, dict):
        return {k: pick(v, b, batch, n) for k, v in obj.items()}
    sizes = getattr(obj, "image_sizes", None)  # torchvision's ImageList (detectors' resized, padded batch)
    if isinstance(getattr(obj, "tensors", None), torch.Tensor) and isinstance(sizes, list) and len(sizes) == batch:
        return type(obj)(pick(obj.tensors, b, batch, n), [sizes[b]] * n)
    return obj


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


@dataclass
class Replay:
    """One replay: image ``b`` of a batch of ``batch``, run as ``n`` copies, the layer giving ``ablated``."""

    b: int
    batch: int
    n: int
    ablated: torch.Tensor


class _Patched:
    """A module's forward during a replay, one action per call of the module."""

    def __init__(self, actions: list[Any], replay: Replay) -> None:
        self.actions, self.replay, self.calls = actions, replay, 0

    def __call__(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        i = self.calls
        self.calls += 1
        act = self.actions[i] if i < len(self.actions) else _RUN
        if act is _RUN:
            return original(*args, **kwargs)
        if isinstance(act, _Ablate):
            return act.output(self.replay)
        return pick(act.out, self.replay.b, self.replay.batch, self.replay.n)


class Plan:
    """The modules a replay replaces, each with its list of per-call actions."""

    def __init__(self, entries: list[tuple[nn.Module, list[Any]]]) -> None:
        self.entries = entries
        self.cached = [t for _, acts in entries for a in acts if isinstance(a, _Cached) for t in _tensors(a.out)]
        self.versions = [t._version for t in self.cached]

    def run(self, model: nn.Module, x: torch.Tensor, replay: Replay, record: bool = False) -> Any:
        """``model(x)`` with the planned modules' forwards replaced, for this call only; with ``record``
        autograd records the replay (from a ``replay.ablated`` that requires grad: the network after
        the layer only)."""
        with Hooks() as hooks:
            for m, acts in self.entries:
                hooks.replace_forward(m, _Patched(acts, replay))
            with torch.enable_grad() if record else torch.no_grad():
                return model(x)

    def poisoned(self) -> "Plan":
        """This plan with every cached floating-point tensor replaced by NaNs: a replay that still gives
        finite, equal scores does not read what ran before the layer (SESS checks its fast mode so)."""
        def nan(obj: Any) -> Any:
            if isinstance(obj, torch.Tensor):
                return torch.full_like(obj, float("nan")) if obj.is_floating_point() else obj
            if isinstance(obj, tuple) and hasattr(obj, "_fields"):
                return type(obj)(*(nan(o) for o in obj))
            if isinstance(obj, (tuple, list)):
                return type(obj)(nan(o) for o in obj)
            if isinstance(obj, dict):
                return {k: nan(v) for k, v in obj.items()}
            return obj

        return Plan([(m, [_Cached(nan(a.out)) if isinstance(a, _Cached) else a for a in acts]) for m, acts in self.entries])

    def cache_modified(self) -> bool:
        """Whether an in-place op changed a cached tensor since the trace (the replay is then wrong)."""
        return any(t._version != v for t, v in zip(self.cached, self.versions))
