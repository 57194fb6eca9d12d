"""Name -> method class registry: ``list_methods()``, ``create(name, model, ...)``.

A meta-method (one built around another, e.g. SESS) is also named with its base: ``"sess:gradcam++"``
is SESS around Grad-CAM++ (``get`` returns SESS's class bound to that base; bases nest:
``"sess:finercam:layercam"``). ``list_methods()`` lists the plain names only.
"""
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
    """The class registered as ``name`` (case, ``-``, ``_`` and ``pp``/``++`` spelling are ignored);
    ``"meta:base"`` gives the meta-method's class bound to that base."""
    if not isinstance(name, str):
        raise CamkitError(f"a method name must be a string, got {type(name).__name__}")
    if ":" in name:
        meta_name, base_name = name.split(":", 1)
        meta = get(meta_name)
        if not getattr(meta, "meta", False):
            metas = [n for n, c in _REGISTRY.items() if getattr(c, "meta", False)]
            raise CamkitError(
                f"{meta_name!r} is not a meta-method, so {name!r} names nothing; 'meta:base' works for "
                f"{', '.join(metas) or 'no registered method'} (e.g. 'sess:gradcam++')"
            )
        return meta.bound(get(base_name))  # type: ignore[attr-defined, no-any-return]
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CamkitError(f"unknown method {name!r}.{hint} Available: {', '.join(_REGISTRY)}")
    return _REGISTRY[canonical]


def create(name: str, model: nn.Module, layer: Any = "auto", **options: Any) -> "BaseCAM":
    """Instantiate the method registered as ``name`` on ``model`` at ``layer``."""
    return get(name)(model, layer=layer, **options)
