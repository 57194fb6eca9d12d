"""Reading an image file into a float ``(3, H, W)`` tensor in [0, 1] (RGB; grey and alpha converted)."""
from __future__ import annotations

import os

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
