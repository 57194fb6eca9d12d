"""Reading weight files: ``torch.load(weights_only=True)`` and strict key matching with clear errors."""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from camkit.errors import UnsupportedModelError

Weights = Union[str, "os.PathLike[str]", None]
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")
_EMA_KEYS = ("state_dict_ema", "model_ema")  # timm's training script saves both; timm loads EMA first
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _read_file(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise UnsupportedModelError(f"{str(path)!r} is a .safetensors file: pip install safetensors") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # header or size errors of a damaged file
            raise UnsupportedModelError(f"{str(path)!r} is not a readable .safetensors file ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # objects other than tensors: refused, never run
        raise UnsupportedModelError(pickle_refusal(str(path), exc)) from None
    except Exception as exc:  # non-tensor objects, truncated files
        raise UnsupportedModelError(
            f"{str(path)!r} is not a weights file torch.load(weights_only=True) can read ({exc}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from exc


def pickle_refusal(file: str, exc: BaseException) -> str:
    """The message for a pickled weights file that `torch.load(weights_only=True)` refused: it names the
    file and what it tried to import (code that would run on loading), and points to safetensors."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f"it imports {found.group(1)}, " if found else ""
    return (f"{file!r} is a pickle holding more than tensors ({what}code that would run on loading); camkit reads "
            "weights with torch.load(weights_only=True) and did not run it. Use a .safetensors file of the model "
            "instead (model.save_pretrained(DIR) writes model.safetensors; safetensors.torch.save_file(state_dict, "
            "PATH) for a state dict), made from a source you trust")


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop a ``module.`` / ``_orig_mod.`` prefix that every key carries (wrapped model saved)."""
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike[str], ema: bool = False) -> dict[str, Tensor]:
    """Load a state dict from ``path`` safely (``weights_only=True`` or safetensors, onto the CPU).

    Accepts a plain ``{name: tensor}`` mapping (``.pth``, ``.pt``, ``.bin``, ``.safetensors``), or a
    checkpoint holding one under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` (with
    ``ema=True``, ``"state_dict_ema"`` / ``"model_ema"`` first, as timm does). A prefix that every
    key carries (``module.`` from DistributedDataParallel, ``_orig_mod.`` from torch.compile) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    obj = _read_file(path)
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in (_EMA_KEYS if ema else ()) + _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UnsupportedModelError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict (a mapping name -> tensor); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return _strip_wrappers(dict(obj))


def load_file_weights(model: nn.Module, weights: Weights, label: str, ema: bool = False) -> None:
    """Strictly load the state-dict file ``weights`` into ``model`` (see `read_state_dict`);
    ``label`` names the model in messages. Only files: a name like ``"imagenet"`` is refused.
    None keeps the random initialisation; so does ``"default"`` (no weights asked for), with a warning.
    """
    if weights == "default":
        warnings.warn(f"{label}: no weights given, the model is randomly initialised (camkit never downloads); "
                      "pass weights=PATH to a checkpoint file, or weights=None to silence this", stacklevel=4)
        return
    if weights is None:
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{label}: weights {str(weights)!r} is not a file; pass weights=PATH to a local checkpoint "
            "(.pth, .pt, .bin, .safetensors; camkit never downloads) or weights=None for random initialisation")
    load_strict(model, read_state_dict(path, ema=ema), repr(str(path)))


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
