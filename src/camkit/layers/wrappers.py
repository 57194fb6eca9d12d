"""Models people wrap: `torch.compile`, `nn.DataParallel`, `DistributedDataParallel`, `quantize_dynamic`.

A wrapper is explained through the module it wraps (`unwrap`): `torch.compile`'s `OptimizedModule`
through `_orig_mod` (run eagerly: camkit's call-scoped hooks need eager modules, and compiled code
would skip them), `DataParallel` and `DistributedDataParallel` through `module` (run in this process on
the input's device; no replicas, no gradient synchronisation). Layer names may be given with or
without the wrapper's prefix (`"layer4"` or `"_orig_mod.layer4"`, `"module.layer4"`); the
explanation names them without it.

Dynamically quantised layers (`torch.ao.quantization.quantize_dynamic`: `nn.quantized.dynamic.Linear`,
LSTM...) have no gradient in PyTorch; `quantized_layers` lists them so gradient methods can refuse the
model with a clear error instead of a blank map.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

#: wrapper class name -> the attribute holding the wrapped module
WRAPPERS = {"OptimizedModule": "_orig_mod", "DataParallel": "module", "DistributedDataParallel": "module"}


def _wrapped(model: nn.Module) -> str | None:
    """The attribute of `model` holding the module it wraps, if `model` is a known wrapper."""
    for cls in type(model).__mro__:
        attr = WRAPPERS.get(cls.__name__)
        if attr is not None and isinstance(getattr(model, attr, None), nn.Module):
            return attr
    return None


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The innermost module of a chain of wrappers and the name prefixes peeled off (`["module."]`);
    `(model, [])` for a model that is no wrapper."""
    prefixes: list[str] = []
    while (attr := _wrapped(model)) is not None:
        prefixes.append(attr + ".")
        model = getattr(model, attr)
    return model, prefixes


def strip_prefixes(spec: Any, prefixes: Sequence[str]) -> Any:
    """A layer spec with the wrappers' name prefixes removed from its names (modules pass unchanged)."""
    if not prefixes:
        return spec
    if isinstance(spec, str):
        for p in prefixes:
            spec = spec[len(p):] if spec.startswith(p) else spec
        return spec
    if isinstance(spec, (list, tuple)):
        return type(spec)(strip_prefixes(s, prefixes) for s in spec)
    return spec


def quantized_layers(model: nn.Module) -> list[str]:
    """Names (and classes) of `model`'s quantised modules: `["fc (DynamicQuantizedLinear)"]`."""
    out, inside = [], []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue  # a quantised module's own parts (its packed parameters)
        if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")):
            out.append(f"{name or '(model)'} ({m._get_name()})")
            inside.append(name)
    return out
