"""One tensor inside a layer's container output, addressed as ``"name[key]"``.

Layers that return several tensors -- a dict or OrderedDict (a torchvision FPN backbone, an
``IntermediateLayerGetter``, a Hugging Face output), a tuple or a list -- are explained through one
of them: ``"backbone[0]"``, ``"backbone[pool]"``, ``"encoder[2]"``, ``"block[hidden_states][-1]"``.
A key is a dict key (compared as text, so ``[0]`` finds both ``"0"`` and ``0``) or a sequence index.
The element is explained as the rest of the network receives it, the other elements held fixed
(gradients are partial derivatives; Ablation-CAM zeroes channels of that element only).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import InputError, LayerNotFoundError

_KEY = re.compile(r"\[([^\[\]]+)\]")


def split_key(name: str) -> tuple[str, tuple[str, ...]]:
    """``"backbone.body[3]"`` -> ``("backbone.body", ("3",))``; a plain name has no keys."""
    start = name.find("[")
    if start < 0:
        return name, ()
    path, rest = name[:start], name[start:]
    keys = tuple(_KEY.findall(rest))
    if "".join(f"[{k}]" for k in keys) != rest:
        raise LayerNotFoundError(
            f"cannot read the layer name {name!r}: address an element of a layer's output as "
            "'module.name[key]' (e.g. 'backbone[0]', 'encoder[2]', 'backbone[pool]')"
        )
    return path, keys


def available(out: Any) -> list[str]:
    """The keys of a container output as they are written in a layer name."""
    if isinstance(out, Mapping):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)):
        return [str(i) for i in range(len(out))]
    return []


def _index(out: Any, key: str, where: str) -> Any:
    """The dict key or sequence index of ``out`` that ``key`` names."""
    keys = available(out)
    if isinstance(out, Mapping):
        for k in out:
            if str(k) == key:
                return k
    elif isinstance(out, (tuple, list)):
        try:
            i = int(key)
        except ValueError:
            i = len(out)  # not an index: reported below
        if -len(out) <= i < len(out):
            return i
    else:
        raise InputError(f"layer {where!r} returns {type(out).__name__}, which has no elements to address with [{key}]")
    raise InputError(
        f"layer {where!r} returns {type(out).__name__}, which has no element [{key}]; choose one of: "
        + ", ".join(f"'{where}[{k}]'" for k in keys)
    )


def select(out: Any, keys: tuple[str, ...], name: str) -> torch.Tensor:
    """The tensor of layer output ``out`` at ``keys``; a clear error names the valid keys otherwise."""
    where = split_key(name)[0]
    for key in keys:
        out = out[_index(out, key, where)]
        where = f"{where}[{key}]"
    if not isinstance(out, torch.Tensor):
        keys_here = available(out)
        hint = (
            "; address one of its tensors: " + ", ".join(f"'{where}[{k}]'" for k in keys_here)
            if keys_here else "; choose a layer whose output is a tensor (e.g. its parent or child)"
        )
        raise InputError(f"layer {where!r} returns {type(out).__name__}, not a tensor{hint}")
    return out


def replace(out: Any, keys: tuple[str, ...], value: torch.Tensor) -> Any:
    """A copy of container ``out`` with the element at ``keys`` replaced by ``value`` (``value`` itself
    when there are no keys). Containers are copied shallowly; the other elements are the same objects."""
    if not keys:
        return value
    k = _index(out, keys[0], "layer")
    inner = replace(out[k], keys[1:], value)
    if isinstance(out, tuple):
        items = list(out)
        items[k] = inner
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    new = copy.copy(out)
    new[k] = inner
    return new
