"""The model's forward in reduced precision and/or channels-last memory format; everything else float32.

``precision``: ``"fp32"`` (nothing changes), ``"bf16"`` or ``"fp16"``. During an explanation every
call of the model runs under ``torch.autocast(device, dtype)`` and its floating outputs are cast back
to float32; the method's own arithmetic (weights, maps) runs with autocast off. So scores, weights,
maps and what is computed from them are float32; only the model's forward (and the backward through
it) is in reduced precision. ``channels_last``: the model's 4-D parameters and buffers (5-D ones:
``channels_last_3d``) are put in channels-last memory format for the explanation and put back
afterwards (the same storage as before, also on exceptions and when several threads explain with one
model), and 4-D (5-D) inputs are passed in channels-last.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import CamkitError, InputError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def parse_precision(precision: Any) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` (also spelled ``float32``, ``bfloat16``, ``float16``)."""
    name = _ALIASES.get(precision, precision) if isinstance(precision, str) else precision
    if name not in PRECISIONS:
        raise InputError(f"precision must be one of 'fp32', 'bf16', 'fp16', got {precision!r}")
    return name


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a precision name (None for fp32)."""
    return PRECISIONS[precision]


def score_tolerance(precision: str) -> float:
    """Relative tolerance for two computations of one score (e.g. a head verified by recomputing it):
    1e-3 in float32, 4 eps of the autocast dtype otherwise (bf16: 0.031, fp16: 0.0039)."""
    dtype = autocast_dtype(precision)
    return 1e-3 if dtype is None else max(1e-3, 4 * torch.finfo(dtype).eps)


def check_available(precision: str, device: torch.device) -> None:
    """`CamkitError` if ``precision`` cannot run (usefully) on ``device``."""
    if precision == "fp32":
        return
    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))  # torch < 2.4
    if not available(device.type):
        raise CamkitError(f"precision={precision!r}: torch has no autocast for device type {device.type!r}; use 'fp32'")
    if device.type == "cpu" and precision == "fp16" and not getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)():
        raise CamkitError(
            "precision='fp16' is not supported on this CPU: it has no native float16 arithmetic (AMX-FP16), so "
            "autocast would emulate it (ResNet-50 ran 33x slower than float32 on a CPU like this); use "
            "precision='bf16' or 'fp32' on CPU, or 'fp16' on a CUDA device"
        )
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise CamkitError(f"precision='bf16' is not supported on {torch.cuda.get_device_name(device)}; use 'fp16' or 'fp32'")


def check_finite(precision: str, scores: torch.Tensor, maps: Sequence[torch.Tensor]) -> None:
    """With reduced precision, NaN/inf scores or maps are an error naming the precision, not a map."""
    if precision == "fp32":
        return
    what = [n for n, ts in (("scores", [scores]), ("maps", maps)) if any(not torch.isfinite(t).all() for t in ts)]
    if what:
        hint = " (float16 overflows above 65504; bfloat16 has float32's range)" if precision == "fp16" else ""
        raise CamkitError(
            f"the model's forward under precision={precision!r} (autocast) produced NaN/inf {' and '.join(what)}"
            f"{hint}; explain this model with precision='fp32'"
        )


def _float32(out: Any) -> Any:
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16)
                    else t, out)


#: channels-last memory format by tensor rank: images (4-D) and clips / volumes (5-D, NDHWC)
_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _channels_last(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.dim() in _FORMATS and t.is_floating_point():
        return t.contiguous(memory_format=_FORMATS[t.dim()])
    return t


_CL_LOCK = threading.Lock()
_CL_USERS: "weakref.WeakKeyDictionary[nn.Module, list[Any]]" = weakref.WeakKeyDictionary()  # model -> [users, saved]


@contextmanager
def channels_last_model(model: nn.Module) -> Iterator[None]:
    """4-D and 5-D (3-D convolutions: NDHWC) parameters (``.data``) and buffers in channels-last inside
    the block, the original tensors back afterwards. Reference-counted per model, so overlapping calls from several threads restore
    the originals once, when the last one ends."""
    with _CL_LOCK:
        entry = _CL_USERS.get(model)
        if entry is None:
            saved = []
            for m in model.modules():
                for store in (m._parameters, m._buffers):
                    for name, t in store.items():
                        if t is None or t.dim() not in _FORMATS or t.is_contiguous(memory_format=_FORMATS[t.dim()]):
                            continue
                        saved.append((store, name, t.data if isinstance(t, nn.Parameter) else t))
                        if isinstance(t, nn.Parameter):
                            t.data = _channels_last(t.data)
                        else:
                            store[name] = _channels_last(t)
            entry = _CL_USERS[model] = [0, saved]
        entry[0] += 1
    try:
        yield
    finally:
        with _CL_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _CL_USERS[model]
                for store, name, original in entry[1]:
                    if isinstance(store[name], nn.Parameter):
                        store[name].data = original
                    else:
                        store[name] = original


@contextmanager
def model_forward(model: nn.Module, precision: str, channels_last: bool, device: torch.device) -> Iterator[None]:
    """Inside the block, calls of ``model`` (from this thread) run as ``precision`` / ``channels_last``
    say (see the module docstring); with ``"fp32"`` and no channels-last it does nothing."""
    dtype = autocast_dtype(precision)
    if dtype is None and not channels_last:
        yield
        return
    check_available(precision, device)
    thread = threading.get_ident()
    active: list[Any] = []

    def pre(_m: nn.Module, args: tuple) -> Optional[tuple]:
        if threading.get_ident() != thread:
            return None
        if dtype is not None:
            ac = torch.autocast(device.type, dtype=dtype)
            ac.__enter__()
            active.append(ac)
        return tuple(_channels_last(a) for a in args) if channels_last else None

    def post(_m: nn.Module, _args: tuple, out: Any) -> Any:
        if threading.get_ident() != thread or dtype is None:
            return None
        if active:
            active.pop().__exit__(None, None, None)
        return _float32(out)

    with ExitStack() as stack:
        if dtype is not None:
            # autocast off for the method's arithmetic; the outer context also keeps autocast's cache of
            # cast weights alive from one model call to the next
            stack.enter_context(torch.autocast(device.type, enabled=False))
            stack.callback(lambda: [active.pop().__exit__(None, None, None) for _ in range(len(active))])
        if channels_last:
            stack.enter_context(channels_last_model(model))
        stack.callback(model.register_forward_pre_hook(pre, prepend=True).remove)
        stack.callback(model.register_forward_hook(post, prepend=True, always_call=True).remove)
        yield
