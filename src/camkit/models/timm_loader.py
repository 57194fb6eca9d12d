"""``timm:NAME``: any timm architecture, weights from a local checkpoint file (never downloaded).

Preprocessing comes from the model's ``pretrained_cfg`` (for ``NAME.tag`` the tag's): ``mean``,
``std``, ``input_size`` (``img_size=`` given to the loader wins), ``interpolation`` and ``crop_pct``
(kept as attributes). Categories: the cfg's ``label_names``, else timm's ImageNet class names when
the class count matches an ImageNet subset, else None.
"""
from __future__ import annotations

import difflib
from typing import Any, Optional

from camkit.errors import UnsupportedModelError
from camkit.models.base import PixelModel
from camkit.models.loaded import adopt, require
from camkit.models.state import Weights, load_file_weights


def _create(timm: Any, name: str, kwargs: dict[str, Any]) -> Any:
    if not timm.is_model(name):
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnsupportedModelError(f"timm has no model {name!r}.{hint} (timm.list_models('*part*') searches "
                                    f"the {len(names)} names)")
    if kwargs.get("pretrained"):
        raise UnsupportedModelError("timm:NAME never downloads: pass weights=PATH to a checkpoint file instead "
                                    "of pretrained=True")
    kwargs.pop("pretrained", None)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:  # bad tag, unknown keyword, invalid size
        raise UnsupportedModelError(f"timm could not build {name!r} with {kwargs or 'no options'}: {exc}") from exc


def _categories(net: Any) -> Optional[list[str]]:
    cfg = net.pretrained_cfg
    n = getattr(net, "num_classes", None)
    names = cfg.get("label_names")
    if names and len(names) == n:
        return list(names)
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(net)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return list(info.label_descriptions()) if info.num_classes() == n else None


def _input_size(net: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
    size = kwargs.get("img_size")
    if size is None:
        _, h, w = net.pretrained_cfg["input_size"]
        return int(h), int(w)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_timm(name: str, weights: Weights = "default", **kwargs: Any) -> PixelModel:
    """``timm.create_model(name, pretrained=False, **kwargs)`` with ``weights`` from a file (``.pth``,
    ``.pt``, ``.bin``, ``.safetensors``; a plain state dict or one under ``state_dict_ema`` /
    ``model_ema`` / ``state_dict`` / ``model``, EMA first as in timm), taking RGB pixels in [0, 1].

    ``weights="default"`` or None: random initialisation (``"default"`` warns).
    """
    timm = require("timm", "timm", "timm:NAME")
    net = _create(timm, name, dict(kwargs))
    load_file_weights(net, weights, f"timm:{name}", ema=True)
    cfg = net.pretrained_cfg
    return adopt(net, mean=cfg["mean"], std=cfg["std"], input_size=_input_size(net, kwargs),
                 categories=_categories(net), task="classification",
                 interpolation=cfg.get("interpolation", "bicubic"), crop_pct=cfg.get("crop_pct"))
