"""The protocol of a metric: every convention as a named field, printable next to each result."""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Protocol:
    """Base of the per-family protocol records (frozen dataclasses).

    Fields are the conventions a published number depends on; ``describe()`` prints them in one line
    so that a report can show exactly how each number was computed.
    """

    NAME: ClassVar[str] = "metric"
    REFERENCE: ClassVar[str] = ""

    def as_dict(self) -> dict[str, Any]:
        """``{"metric": NAME, <field>: <value>, ..., "reference": REFERENCE}``."""
        return {"metric": self.NAME, **dataclasses.asdict(self), "reference": self.REFERENCE}

    def describe(self) -> str:
        """One line: ``NAME: field=value, ... [REFERENCE]``."""
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        ref = f" [{self.REFERENCE}]" if self.REFERENCE else ""
        return f"{self.NAME}: {fields}{ref}"


def callable_name(fn: Any) -> str:
    """A readable name for a callable stored in a protocol: ``"none"`` for None, a function's
    ``__name__``, else the object's repr (e.g. ``Normalize(mean=[...], std=[...])``), 200 chars at most."""
    if fn is None:
        return "none"
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return fn.__name__
    return repr(fn)[:200]
