"""An upload decoded within bounds: five formats only, a pixel cap, and a bounded decoded size.

Only PNG, JPEG, WebP, BMP and TIFF are opened (`FORMATS`; Pillow's other readers, EPS
through Ghostscript among them, are never tried): anything else is a 415. An image of more than
the server's megapixels is a 413, read from the header before any pixel is decoded; so is one
that Pillow itself refuses as a decompression bomb. An image larger than `MAX_SIDE` pixels
per side is decoded smaller: a JPEG in draft mode (its decoder scales by 1/2, 1/4 or 1/8 on the
fly, never below the bound), then any format resized (antialiased) to fit ``MAX_SIDE``, so only
the 8-bit pixels of the file pass through memory at full size and the float tensor holds at most
``MAX_SIDE`` x ``MAX_SIDE`` pixels. The model's input is resized from that image, as ``camkit
explain`` resizes the file (the same input for files within ``MAX_SIDE``; for larger ones it
differs slightly from one resized straight from the file: two resamplings instead of one).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from .service import BadRequest

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")  # Pillow's names of the accepted formats
MAX_SIDE = 1024  # larger images are decoded (JPEG draft, then a resize) to at most this many pixels per side


@dataclass(frozen=True)
class Decoded:
    """The decoded ``pixels`` ``(3, h, w)`` uint8 RGB with ``h, w <= MAX_SIDE`` (a quarter of the
    float image's memory while the request waits), and the file's own ``width``, ``height``."""

    pixels: torch.Tensor
    width: int
    height: int

    @property
    def image(self) -> torch.Tensor:
        """The image as a float ``(3, h, w)`` tensor in [0, 1]."""
        return self.pixels.float().div_(255.0)


def _too_many_pixels(w: int, h: int, max_pixels: int) -> BadRequest:
    return BadRequest(413, f"the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; this server takes up to "
                           f"{max_pixels / 1e6:g} megapixels (camkit serve --max-megapixels)")


def decode_image(data: bytes, max_pixels: int) -> Decoded:
    """An uploaded file decoded to at most `MAX_SIDE` pixels per side, or `BadRequest`
    (413 past ``max_pixels`` or a decompression bomb, 415 not one of `FORMATS` or unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise _too_many_pixels(w, h, max_pixels)
            scale = MAX_SIDE / max(w, h)
            if scale < 1:  # JPEG (and MPO): decoded at the smallest 1/2^k scale still >= the bound; others: no-op
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            im.load()  # decode now, so a truncated file fails here
            rgb = im if im.mode == "RGB" else im.convert("RGB")
    except BadRequest:
        raise
    except Image.DecompressionBombError as e:
        raise BadRequest(413, f"the image is too large to decode safely ({e}); this server takes up to "
                              f"{max_pixels / 1e6:g} megapixels (camkit serve --max-megapixels)") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        why = "not one of these formats" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise BadRequest(415, f"the upload ({len(data)} bytes) is not an image this server reads (PNG, JPEG, WebP, "
                              f"BMP or TIFF): {why}") from e
    if scale < 1:  # antialiased (an integer reduce first, then bilinear)
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR,
                         reducing_gap=2.0)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))
    return Decoded(pixels.permute(2, 0, 1).contiguous(), w, h)
