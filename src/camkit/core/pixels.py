"""Pixel range check for models that take pixels in [0, 1] and normalise inside (camkit's zoo).

Such a model given 0..255 floats, or an already normalised tensor, runs without error and explains
the wrong thing (EfficientNet-Lite0 calls the 0..255 espresso photo a loudspeaker). The first
forward whose input leaves ``[-TOLERANCE, 1 + TOLERANCE]`` warns once per model, with the fix.
camkit's own perturbations that may leave the range (Smooth Grad-CAM++'s Gaussian noise) run
inside `unchecked`.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator

import torch

TOLERANCE = 0.05  # resampling overshoot (bicubic) stays within this
_CHECK = contextvars.ContextVar("camkit_pixel_check", default=True)


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Inside this block, pixel models do not check their input range (for deliberate perturbations)."""
    token = _CHECK.set(False)
    try:
        yield
    finally:
        _CHECK.reset(token)


def advice(lo: float, hi: float) -> str:
    """What a value range outside [0, 1] most likely is, and the fix."""
    if hi > 2.0 and lo >= -TOLERANCE:
        return "it looks like 0..255 pixel values: pass x / 255"
    if lo < -0.5:
        return ("it looks already normalised (e.g. (x - mean) / std): the model normalises inside, so pass "
                "the pixels in [0, 1] (undo it with x * std + mean)")
    return "clamp it with x.clamp(0, 1) if the overshoot comes from resampling"


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def check_range(x: torch.Tensor, owner: object) -> None:
    """Warn once per ``owner`` when ``x`` leaves [0, 1] by more than `TOLERANCE`.

    Costs one min/max over the input per forward until the warning has been given."""
    if getattr(owner, "_camkit_range_warned", False) or not _CHECK.get() or not x.is_floating_point() \
            or x.numel() == 0 or torch.jit.is_tracing() or _compiling():
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo >= -TOLERANCE and hi <= 1 + TOLERANCE:
        return
    object.__setattr__(owner, "_camkit_range_warned", True)
    warnings.warn(
        f"{type(owner).__name__} takes RGB pixels in [0, 1] and normalises them itself, but got input in "
        f"[{lo:.3g}, {hi:.3g}]; {advice(lo, hi)}. (Warned once per model.)", UserWarning, stacklevel=3,
    )
