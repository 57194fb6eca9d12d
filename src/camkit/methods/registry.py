"""Name -> method class registry: ``list_methods()``, ``create(name, model, ...)``."""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from torch import nn

from ..errors import CamkitError

if TYPE_CHECKING:
    from .base import BaseCAM

_REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}
T = TypeVar("T", bound=type)


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "").replace("plusplus", "++").replace("pp", "++")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a method available as ``create(name, ...)``."""

    def deco(cls: T) -> T:
        _REGISTRY[name] = cls
        _ALIASES[_key(name)] = name
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> type:
    """The class registered as ``name`` (case, ``-``, ``_`` and ``pp``/``++`` spelling are ignored)."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CamkitError(f"unknown method {name!r}.{hint} Available: {', '.join(_REGISTRY)}")
    return _REGISTRY[canonical]


def create(name: str, model: nn.Module, layer: Any = "auto", **options: Any) -> "BaseCAM":
    """Instantiate the method registered as ``name`` on ``model`` at ``layer``."""
    return get(name)(model, layer=layer, **options)
