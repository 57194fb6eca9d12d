"""``hf:DIR``: a Hugging Face transformers image classifier or semantic-segmentation model saved in a
local directory (``save_pretrained``), loaded offline (``local_files_only=True``).

The directory's ``config.json`` chooses the head: architectures that ``AutoModelForSemanticSegmentation``
builds (Segformer, DPT, UperNet, BEiT, MobileViT...) load as segmentation models, those of
``AutoModelForImageClassification`` as classifiers. Preprocessing comes from the image processor's
``preprocessor_config.json`` beside it; for RGB pixels ``x`` in [0, 1] (``255 x`` in the processor's
terms) it is one affine map per channel,

    t = (255 x * rescale_factor - image_mean) / image_std     (rescale only if do_rescale,
                                                               normalise only if do_normalize),

that is ``(x - mean') / std'`` with ``mean' = image_mean / a``, ``std' = image_std / a``,
``a = 255 * rescale_factor``. ``input_size`` is ``crop_size`` (when ``do_center_crop``), else ``size``
(``height``/``width`` or ``shortest_edge``), else the config's ``image_size``. Categories come from
``config.id2label`` unless they are placeholders (``LABEL_0``...). Models whose forward takes
``interpolate_pos_encoding`` (ViT, DeiT, BEiT...) get it for inputs of another size than the
config's ``image_size``, so their position embeddings are interpolated instead of the input refused.
"""
from __future__ import annotations

import inspect
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from camkit.errors import UnsupportedModelError
from camkit.models.base import PixelModel
from camkit.models.loaded import adopt, require
from camkit.models.state import Weights, pickle_refusal

PROCESSOR_FILE = "preprocessor_config.json"
#: PIL resampling codes as image processors store them
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _directory(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        hint = " (hf: models take their weights from the directory, not from NAME=WEIGHTS)" if "=" in path else ""
        raise FileNotFoundError(
            f"hf:{path}: no such directory{hint}; hf: takes a local directory written by save_pretrained "
            "(config.json, model.safetensors and preprocessor_config.json). camkit never downloads: fetch "
            "a hub model elsewhere with `hf download ORG/NAME --local-dir DIR` and copy DIR here")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"hf:{path}: the directory has no config.json; save the model there with "
                                "model.save_pretrained(DIR)")
    return folder


def _read_processor(folder: Path) -> dict[str, Any]:
    file = folder / PROCESSOR_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"hf:{folder}: no {PROCESSOR_FILE}, so the model's preprocessing is unknown; save the image "
            f"processor beside the model (processor.save_pretrained(DIR)) or write {PROCESSOR_FILE} with "
            "image_mean, image_std and size")
    try:
        proc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"{file}: not readable JSON ({exc})") from exc
    if not isinstance(proc, dict):
        raise UnsupportedModelError(f"{file}: expected a JSON object, got {type(proc).__name__}")
    return proc


def pixel_normalisation(proc: dict[str, Any], source: str) -> tuple[list[float], list[float]]:
    """``(mean', std')`` for pixels in [0, 1] equivalent to the processor's rescale + normalise."""
    if proc.get("do_flip_channel_order"):
        raise UnsupportedModelError(f"{source}: the processor flips RGB to BGR (do_flip_channel_order), which "
                                    "camkit's per-channel normalisation cannot do yet")
    scale = 255.0 * (float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) else 1.0)
    if proc.get("do_normalize", True):
        missing = [k for k in ("image_mean", "image_std") if proc.get(k) is None]
        if missing:
            raise UnsupportedModelError(f"{source}: do_normalize is set but {missing} are missing")
        mean, std = proc["image_mean"], proc["image_std"]
        mean, std = ([mean] * 3 if isinstance(mean, (int, float)) else mean), ([std] * 3 if isinstance(std, (int, float)) else std)
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    return [float(m) / scale for m in mean], [float(s) / scale for s in std]


def input_size(proc: dict[str, Any], config: Any, source: str) -> tuple[int, int]:
    """``(H, W)`` the processor feeds the model (see the module docstring)."""
    size = proc.get("crop_size") if proc.get("do_center_crop") and proc.get("crop_size") else proc.get("size")
    if size is None:
        size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise UnsupportedModelError(f"{source}: cannot read an input size from size={size!r}; write "
                                f"\"size\": {{\"height\": H, \"width\": W}} in {PROCESSOR_FILE}")


def categories(config: Any) -> Optional[list[str]]:
    """``config.id2label`` as a list, or None when its names are placeholders (``LABEL_0``...)."""
    id2label = getattr(config, "id2label", None) or {}
    n = len(id2label)
    names = [id2label.get(i, id2label.get(str(i))) for i in range(n)]
    if not n or any(v is None for v in names) or all(re.fullmatch(r"LABEL_\d+", str(v)) for v in names):
        return None
    return [str(v) for v in names]


def _head(transformers: Any, config: Any, source: str) -> tuple[Any, str]:
    """The Auto class and the camkit task for the directory's architecture."""
    from transformers.models.auto import modeling_auto as auto

    kinds = [(auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES, transformers.AutoModelForSemanticSegmentation,
              "segmentation"),
             (auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, transformers.AutoModelForImageClassification,
              "classification")]
    archs = list(getattr(config, "architectures", None) or [])
    for names, cls, task in kinds:
        if any(a in set(names.values()) for a in archs) or (not archs and config.model_type in names):
            return cls, task
    raise UnsupportedModelError(
        f"{source}: holds {archs or config.model_type!r}, which is neither an image classifier "
        "(AutoModelForImageClassification) nor a semantic-segmentation model (AutoModelForSemanticSegmentation); "
        "camkit explains those (a base model without a head has no class scores)")


def resize_keyword(net: Any, config: Any) -> Optional[tuple[str, tuple[int, int]]]:
    """``("interpolate_pos_encoding", config's image_size)`` when the model's forward takes that flag."""
    size = getattr(config, "image_size", None)
    if "interpolate_pos_encoding" not in inspect.signature(type(net).forward).parameters or size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    return "interpolate_pos_encoding", (int(h), int(w))


def _mismatch(item: Any) -> str:
    if isinstance(item, (tuple, list)) and len(item) == 3:  # (key, shape in the file, shape in the model)
        return f"{item[0]}: file {tuple(item[1])} vs model {tuple(item[2])}"
    return str(item)


def _check_loading(info: dict[str, Any], source: str) -> None:
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(_mismatch(m) for m in info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise UnsupportedModelError(
            f"{source}: the weights do not match the architecture in config.json (missing keys: {missing[:8]}, "
            f"shape mismatches: {mismatched[:4]}); the model would be partly random")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        warnings.warn(f"{source}: weights not used by the model: {unexpected[:8]}", stacklevel=4)


def load_hf(path: str, weights: Weights = "default", **kwargs: Any) -> PixelModel:
    """The model saved in directory ``path``, taking RGB pixels in [0, 1] (see the module docstring).

    ``weights="default"``: the directory's weights (missing or mismatched keys are an error);
    None: random initialisation from its config. ``kwargs`` go to ``from_pretrained``.
    """
    source = f"hf:{path}"
    transformers = require("transformers", "hf", "hf:DIR")
    folder = _directory(path)
    proc = _read_processor(folder)
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    auto_cls, task = _head(transformers, config, source)
    if weights is None:
        net = auto_cls.from_config(config)
    elif weights == "default":
        kwargs.setdefault("ignore_mismatched_sizes", True)  # reported by _check_loading, with the keys
        try:
            net, info = auto_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                 **kwargs)
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a pickle: not run
            files = sorted(f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt")) or ["?"]
            raise UnsupportedModelError(f"{source}: " + pickle_refusal(str(folder / files[0]), exc)) from None
        except (OSError, RuntimeError, ValueError) as exc:  # no weights file, shape mismatch, bad option
            raise UnsupportedModelError(f"{source}: transformers could not load the model: {exc}") from exc
        _check_loading(info, source)
    else:
        raise UnsupportedModelError(f"{source}: weights come from the directory; pass no weights (or None for "
                                    f"random initialisation), not {weights!r}")
    mean, std = pixel_normalisation(proc, source)
    crop = proc.get("crop_pct")
    net.resize_keyword = resize_keyword(net, config)  # a PixelModel attribute once adopted
    return adopt(net.float(), mean=mean, std=std, input_size=input_size(proc, config, source),
                 categories=categories(config), task=task,
                 interpolation=_RESAMPLE.get(proc.get("resample", 2), "bilinear"),
                 crop_pct=float(crop) if crop is not None else None)


class HFVideo(nn.Module):
    """A Hugging Face video classifier (VideoMAE, TimeSformer, ViViT: ``pixel_values`` ``(B, T, C, H, W)``)
    taking camkit's clips ``(B, C, T, H, W)`` and returning its logits ``(B, N)``; ``grid_dims`` 3.

    ``model`` stays a submodule named ``model``, so its layers read ``model.videomae.encoder.layer.11``.
    """

    grid_dims = 3

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        labels = getattr(self.config, "id2label", None) or {}
        self.categories = [labels[i] for i in sorted(labels)] if labels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x.transpose(1, 2)).logits  # type: ignore[no-any-return]
