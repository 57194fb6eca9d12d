"""``monai:NAME``: a network of ``monai.networks.nets`` (MONAI, medical imaging), random init or weights
from a local file (never downloaded).

``NAME`` is the builder's name in any case: ``densenet121``, ``resnet18``, ``seresnet50``... Keyword
options go to the builder; camkit spells the common ones one way for every family: ``spatial_dims``
(3: volumes ``(B, C, D, H, W)``, the default; 2: images), ``in_channels`` and ``out_channels`` (the
classes) are renamed to what the builder calls them (``n_input_channels`` / ``num_classes`` for
``ResNet``, ``num_classes`` for ``SENet``). The model is returned as MONAI builds it (intensities as
they are: no pixel normalisation inside), in eval mode, with ``grid_dims`` = ``spatial_dims``,
``task`` ``"classification"``, no ``categories`` and ``input_size`` (option ``input_size=``; default
96x96x96 for volumes, 224x224 for images); ``layer="auto"`` chooses on the user's volumes.
"""
from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from camkit.errors import UnsupportedModelError
from camkit.models.loaded import require
from camkit.models.state import Weights, load_file_weights

#: camkit's spelling -> the other spellings of MONAI's builders
_SPELLINGS = {"in_channels": ("n_input_channels",), "out_channels": ("num_classes",)}


def _builder(nets: Any, name: str) -> Any:
    found = {n.lower(): n for n in dir(nets) if not n.startswith("_") and callable(getattr(nets, n))}
    if name.lower() not in found:
        close = difflib.get_close_matches(name.lower(), list(found), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(found[c] for c in close)}?" if close else ""
        raise UnsupportedModelError(f"monai.networks.nets has no network {name!r}.{hint}")
    return getattr(nets, found[name.lower()])


def _build(builder: Any, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``builder(**kwargs)``, renaming a camkit spelling the builder does not take (it says so in its
    ``TypeError``: "unexpected keyword argument 'in_channels'") to the builder's own."""
    kwargs = dict(kwargs)
    for _ in range(len(_SPELLINGS) + 1):
        try:
            return builder(**kwargs)  # type: ignore[no-any-return]
        except TypeError as exc:
            bad = next((k for k in _SPELLINGS if k in kwargs and f"'{k}'" in str(exc)), None)
            if bad is None:
                raise UnsupportedModelError(f"MONAI could not build {name!r} with {kwargs}: {exc}") from exc
            kwargs[_SPELLINGS[bad][0]] = kwargs.pop(bad)
        except ValueError as exc:
            raise UnsupportedModelError(f"MONAI could not build {name!r} with {kwargs}: {exc}") from exc
    raise UnsupportedModelError(f"MONAI could not build {name!r} with {kwargs}")


def load_monai(name: str, weights: Weights = "default", **kwargs: Any) -> nn.Module:
    """MONAI network ``name`` built with ``kwargs`` (``spatial_dims`` default 3), weights from a file."""
    nets = require("monai.networks.nets", "medical", "monai:NAME")
    builder = _builder(nets, name)
    kwargs.setdefault("spatial_dims", 3)
    if kwargs.get("pretrained"):
        raise UnsupportedModelError("monai:NAME takes its weights as a file (load(name, weights=PATH)), not "
                                    "pretrained=True: camkit never downloads")
    size = kwargs.pop("input_size", None)
    net = _build(builder, name, kwargs)
    load_file_weights(net, weights, f"monai:{name}")
    net.eval()
    net.grid_dims = int(kwargs["spatial_dims"])
    net.task = "classification"
    net.categories = None
    net.default_layer = None  # chosen on the user's inputs (layer="auto")
    dims = int(kwargs["spatial_dims"])
    net.input_size = tuple(int(v) for v in size) if size is not None else ((96,) * 3 if dims == 3 else (224, 224))
    return net
