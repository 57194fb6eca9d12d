"""Reading weight files: ``torch.load(weights_only=True)`` and strict key matching with clear errors."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from camkit.errors import UnsupportedModelError

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a state dict from ``path`` safely (``weights_only=True``, onto the CPU).

    Accepts a plain ``{name: tensor}`` mapping, or a checkpoint holding one under
    ``"state_dict"``, ``"model"`` or ``"model_state_dict"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, non-tensor objects, truncated files
        raise UnsupportedModelError(
            f"{str(path)!r} is not a weights file torch.load(weights_only=True) can read ({exc}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UnsupportedModelError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict (a mapping name -> tensor); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return dict(obj)


def load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with missing/unexpected/mismatched keys named.

    Tensors are cast to each parameter's dtype (weights may be shipped as float16).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_preview(shapes, 4)}")
        raise UnsupportedModelError(
            f"weights {source} do not match {type(model).__name__}: " + "; ".join(parts)
            + ". The file must be a state dict of this exact architecture."
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
