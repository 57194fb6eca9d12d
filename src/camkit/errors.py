"""Exception types raised by camkit. Each message says what was wrong and what would be right."""
from __future__ import annotations


class CamkitError(Exception):
    """Base class of every error camkit raises on purpose."""


class LayerNotFoundError(CamkitError, KeyError):
    """A layer name that does not exist in the model (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(CamkitError, ValueError):
    """An input tensor of the wrong rank, dtype, channel count or size."""


class TargetError(CamkitError, ValueError):
    """Targets that do not match the batch or the model output."""


class NoGradientError(CamkitError, RuntimeError):
    """The explained score does not depend on the target layer."""


class UnsupportedModelError(CamkitError, ValueError):
    """The model's structure does not allow the requested method (e.g. CAM without a GAP+linear head)."""


class ZeroGradientWarning(UserWarning):
    """The explained score's gradient at the target layer is exactly zero: the map is blank."""
