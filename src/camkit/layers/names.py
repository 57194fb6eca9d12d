"""Resolve the layer(s) to explain: a dotted name, a module, a list of them, or ``"auto"``.

A name may end in keys that pick one tensor of a container output (``"backbone[0]"``, see
`camkit.core.keys`); the keys are checked when the layer's output is seen.
"""
from __future__ import annotations

import difflib
from typing import Sequence, Union

from torch import nn

from ..errors import LayerNotFoundError
from ..core.keys import split_key

LayerSpec = Union[str, nn.Module, Sequence[Union[str, nn.Module]]]

POOLING = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.AvgPool1d, nn.MaxPool1d, nn.Flatten,
)


def module_name(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside ``model`` (``""`` for the model itself)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LayerNotFoundError(
        f"the module {type(module).__name__} passed as layer is not a submodule of the model"
    )


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` (keys ``[k]`` stripped); unknown names raise with the
    closest valid names."""
    name = split_key(name)[0]
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        if not close:  # fall back to names sharing the last component or the prefix
            tail = name.split(".")[-1]
            close = [n for n in names if n.endswith("." + tail) or n.startswith(name)][:5]
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        raise LayerNotFoundError(
            f"model {type(model).__name__} has no layer {name!r}.{hint} "
            f"(see [n for n, _ in model.named_modules()] for all {len(names)} names, or use layer='auto')"
        ) from None


def resolve_layers(model: nn.Module, spec: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Turn a layer spec (not ``"auto"``) into a list of ``(name, module)`` pairs."""
    items = [spec] if isinstance(spec, (str, nn.Module)) else list(spec)
    if not items:
        raise LayerNotFoundError("layer list is empty; pass a name, a module, a list of them, or 'auto'")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, find_layer(model, item)))
        elif isinstance(item, nn.Module):
            out.append((module_name(model, item), item))
        else:
            raise LayerNotFoundError(
                f"layer must be a dotted name, an nn.Module or a list of them, got {type(item).__name__}"
            )
    return out
