"""Reading an image file into a float ``(3, H, W)`` tensor in [0, 1] (RGB; grey and alpha converted);
importing the optional reader of other files (PyAV, nibabel) with the extra that installs it."""
from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor


def read_image(path: str | os.PathLike[str]) -> Tensor:
    """Decode ``path`` with Pillow; raises ``OSError``/``ValueError`` on a missing or corrupt file."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode fully now, so a truncated file fails here
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def optional(module: str, purpose: str, extra: str) -> Any:
    """Import ``module``, or an ImportError saying ``purpose`` needs it and ``pip install 'camkit[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs {module}: pip install 'camkit[{extra}]' (or pip install {module})") from exc
