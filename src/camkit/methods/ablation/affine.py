"""Is a computation affine in one of its tensors? Decided op by op, at the aten level, while it runs.

`AffineWatch` is a ``TorchDispatchMode`` around a computation that reads a ``source``
tensor ``A``. Tensors computed from ``A`` are *derived*; each carries a kind:

- ``HOMOGENEOUS``: every element is a constant or ``phi(c * a)`` for one element ``a`` of ``A``, a
  constant ``c`` and a positively homogeneous ``phi`` (identity, ReLU, leaky ReLU, abs:
  ``phi(t a) = t phi(a)`` for ``t >= 0``). Views, copies, indexing with constant indices, padding,
  scaling by constants keep this kind; ReLU needs it.
- ``AFFINE``: an affine function (fixed by constants) of derived tensors: sums, means, pooling,
  linear / convolution / eval BatchNorm with constant weights, adding constants.

Both kinds give, for every 0/1 mask ``m`` over the elements of ``A``, a tensor ``T(A - t m*A)`` that
is affine in ``t`` on [0, 1]; hence ``T(A - m*A) = T(A) - J_T(A) (m*A)``: zeroing part of ``A``
changes ``T`` by exactly what one backward pass predicts. Any other op on a derived tensor -- a
non-linearity, a product of two derived tensors, a comparison, a data-dependent index, reading a
value into Python (``.item()``, ``bool()``, so a data-dependent branch), a train-mode BatchNorm or
dropout, writing derived values into a tensor made before -- stops the computation with
`NotAffine` naming the op (and ``reason`` keeps it, should the computation catch the error).

Not seen: values taken out of torch (``.numpy()``) and brought back; a caller that needs certainty
also compares a few results with what the affine model predicts.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOMOGENEOUS, AFFINE = 2, 1


class NotAffine(Exception):
    """Raised from inside the watched computation at the first op that is not affine in the source."""


# name (aten, in-place "_" dropped) -> (result, slots where derived tensors may appear, product slots
# of which at most one may be derived, extra condition on (args, kwargs))
_Rule = tuple[str, tuple[int, ...], tuple[int, ...], Optional[Callable[[tuple, dict], bool]]]
_KEEP, _HOMOG, _AFFINE = "keep", "homogeneous", "affine"
_RULES: dict[str, _Rule] = {}
for _n in (
    "alias detach clone contiguous _to_copy view _unsafe_view reshape _reshape_alias permute transpose t "
    "expand squeeze unsqueeze slice select narrow as_strided unfold repeat roll flip split split_with_sizes "
    "unsafe_split unbind chunk diagonal movedim index_select index _unsafe_index gather constant_pad_nd "
    "masked_fill cat stack neg lift_fresh"
).split():
    _RULES[_n] = (_KEEP, (0,), (), None)
_RULES["where"] = (_KEEP, (1, 2), (), None)  # a constant condition picks elements
_RULES["mul"] = (_KEEP, (0, 1), (0, 1), None)
_RULES["div"] = (_KEEP, (0,), (), lambda a, kw: kw.get("rounding_mode") is None)  # not floor / trunc
_RULES["native_dropout"] = (_KEEP, (0,), (), lambda a, kw: a[2] is False)  # eval: the input
for _n in ("relu", "leaky_relu", "abs"):
    _RULES[_n] = (_HOMOG, (0,), (), None)
_RULES["threshold"] = (_HOMOG, (0,), (), lambda a, kw: a[1] == 0 and a[2] == 0)  # = relu
for _n in ("add", "sub", "rsub"):
    _RULES[_n] = (_AFFINE, (0, 1), (), None)
for _n in (
    "sum mean cumsum avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
    "adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d upsample_nearest1d upsample_nearest2d "
    "upsample_nearest3d upsample_linear1d upsample_bilinear2d upsample_trilinear3d convolution _convolution "
    "conv1d conv2d conv3d linear _native_batch_norm_legit_no_training"
).split():
    _RULES[_n] = (_AFFINE, (0,), (), None)
for _n in ("native_batch_norm", "cudnn_batch_norm", "miopen_batch_norm"):
    _RULES[_n] = (_AFFINE, (0,), (), lambda a, kw: a[5] is False)  # eval: running statistics
for _n in ("mm", "bmm", "mv", "dot", "vdot", "matmul"):
    _RULES[_n] = (_AFFINE, (0, 1), (0, 1), None)
for _n in ("addmm", "addmv", "addbmm", "baddbmm"):
    _RULES[_n] = (_AFFINE, (0, 1, 2), (1, 2), None)
#: ops that only read the shape of a derived tensor: their results are constants
_SHAPE_ONLY = set("empty_like zeros_like ones_like full_like new_empty new_empty_strided new_zeros new_ones new_full".split())
#: random draws: a computation that makes them is not one function of the source (e.g. train-mode dropout)
_RANDOM = set(
    "bernoulli rand rand_like randn randn_like randint randint_like randperm normal uniform exponential "
    "geometric cauchy log_normal multinomial".split()
)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in an aten argument (a tensor or a list of them), its args tuple or kwargs dict."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


class AffineWatch(TorchDispatchMode):
    """``with AffineWatch(a) as w: out = f(a)``, then ``w.affine(out)``: whether ``out`` is derived
    from ``a`` through affine ops only (see the module docstring); ``w.reason`` says why not."""

    def __init__(self, source: torch.Tensor) -> None:
        super().__init__()
        self._derived: dict[int, tuple[torch.Tensor, int]] = {id(source): (source, HOMOGENEOUS)}
        self.reason: Optional[str] = None
        self.ops: set[str] = set()  # names of the ops applied to derived tensors

    def kind(self, t: Any) -> Optional[int]:
        """``HOMOGENEOUS`` or ``AFFINE`` for a derived tensor, None for anything else."""
        entry = self._derived.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0] is t else None

    def affine(self, t: Any) -> bool:
        """``t`` is derived from the source and every op on the way was affine."""
        return self.reason is None and self.kind(t) is not None

    def _fail(self, why: str) -> None:
        if self.reason is None:
            self.reason = why
        raise NotAffine(why)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name.rstrip("_") in _RANDOM:
            self._fail(f"{func} draws random numbers (train-mode dropout?), so the computation is not one function")
        if self.reason is not None or all(self.kind(t) is None for t in _tensors((args, kwargs))):
            return func(*args, **kwargs)
        if name in _SHAPE_ONLY:
            return func(*args, **kwargs)
        base = name[:-1] if name.endswith("_") else name
        self.ops.add(base)
        result = self._classify(base, args, kwargs, func)
        written = _written(func, args, kwargs)
        if any(self.kind(t) is None for t in written):
            self._fail(f"{func} writes values computed from the layer into a tensor made before it")
        out = func(*args, **kwargs)
        for t in written:  # in place: every derived alias of the written tensor takes the new kind
            store = t.untyped_storage().data_ptr()
            for key, (d, k) in list(self._derived.items()):
                if d.untyped_storage().data_ptr() == store:
                    self._derived[key] = (d, min(k, result))
        outs = _tensors(out)
        if outs and not any(t.is_floating_point() for t in outs):
            self._fail(f"{func} turns values computed from the layer into {outs[0].dtype}")
        for t in outs:  # (non-floating by-products, e.g. cuDNN batch norm's workspace, are not values)
            if t.is_floating_point() and self.kind(t) is None:
                self._derived[id(t)] = (t, result)
        return out

    def _classify(self, name: str, args: tuple, kwargs: dict, func: Any) -> int:
        """The kind of the op's result; `NotAffine` if the op is not affine in the source."""
        rule = _RULES.get(name)
        if rule is None:
            self._fail(f"{func} is not affine in the layer's output")
        mode, slots, product, when = rule  # type: ignore[misc]
        if any(self.kind(t) is not None for t in _tensors(kwargs)):
            self._fail(f"{func} takes a value computed from the layer as a keyword argument")
        kinds: list[int] = []
        factors = 0
        for i, a in enumerate(args):
            ks = [k for k in map(self.kind, _tensors(a)) if k is not None]
            if ks and i not in slots:
                self._fail(f"{func} uses a value computed from the layer as argument {i}, where only a constant is affine")
            factors += bool(ks) and i in product
            kinds += ks
        if factors > 1:
            self._fail(f"{func} multiplies two values computed from the layer")
        if when is not None and not when(args, kwargs):
            self._fail(f"{func} with these arguments (training mode, a non-zero threshold) is not affine")
        if mode == _HOMOG and min(kinds) != HOMOGENEOUS:
            self._fail(f"{func} acts on a value that is not a scaled or moved copy of the layer's output, so "
                       "zeroing a channel does not move its input to zero")
        return AFFINE if mode == _AFFINE else min(kinds)


def _written(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an op writes to (in-place ``self``, ``out=``), from its schema."""
    params = func._schema.arguments
    values = list(args) + [kwargs.get(p.name) for p in params[len(args):]]
    return [t for p, v in zip(params, values) if p.alias_info is not None and p.alias_info.is_write
            for t in _tensors(v)]
