"""Pictures of explanations: a map over an image, signed attributions, labelled grids; all return PIL
images (which Jupyter shows inline).

>>> camkit.viz.overlay(Image.open("cat.jpg"), maps[0]).save("cat.png")   # map resized to the photo
>>> camkit.viz.show(cam.explain(x, targets=camkit.TopK(3)), x, labels=model.categories)

Images may be PIL images, numpy arrays or torch tensors (any device), channels-first ``(3, H, W)``
or channels-last ``(H, W, 3)`` (or grey ``(H, W)``): ``uint8`` is read as 0..255 and divided by
255, floats must already be in [0, 1] (anything else is an error that says how to fix it, never a
silent clip). Maps are ``(h, w)`` in [0, 1] and are resized bilinearly to the image. Nothing here
needs a display (colour maps come from matplotlib's registry, no figure is opened).
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .core.pixels import TOLERANCE, advice
from .errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from .data.geometry import Frame
    from .methods.explanation import Explanation

ArrayLike = Union[torch.Tensor, np.ndarray]
ImageLike = Union[Image.Image, torch.Tensor, np.ndarray]

__all__ = ["overlay", "heatmap", "attribution", "to_pil", "to_tensor", "grid", "encode", "draw_boxes", "show", "to_original",
           "image_size", "clip_overlays", "frame_strip", "save_clip", "volume_slices", "show_clip", "show_volume"]
_CHANNELS = (1, 3, 4)


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _channels_last(shape: tuple[int, ...], torch_convention: bool) -> bool:
    """Whether a 3-D image of ``shape`` is ``(H, W, C)``: the axis that can be channels (1, 3 or 4)
    decides; when both can, tensors are read channels-first and arrays channels-last."""
    first, last = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    return last and not (first and torch_convention)


def _hwc(image: ImageLike) -> np.ndarray:
    """Any accepted image (see the module docstring) -> ``(H, W, 3)`` float32 in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    is_tensor = isinstance(image, torch.Tensor)
    raw = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    shape = tuple(raw.shape)
    if raw.ndim == 4 and shape[0] == 1:
        raw = raw[0]
    if raw.ndim == 3 and not (raw.shape[0] in _CHANNELS or raw.shape[-1] in _CHANNELS):
        raise InputError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {shape}")
    if raw.ndim == 3 and not _channels_last(raw.shape, is_tensor):
        raw = np.moveaxis(raw, 0, -1)
    elif raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        hint = ("; for a batch use camkit.viz.show(explanation, images); for a clip or volume (C, T, H, W) "
                "camkit.viz.show_clip / show_volume / frame_strip") if raw.ndim == 4 else ""
        raise InputError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {shape}{hint}")
    a = _unit_range(raw)
    if a.shape[-1] == 4:  # RGBA: drop alpha
        a = a[..., :3]
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _unit_range(raw: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, floats checked."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if not np.issubdtype(raw.dtype, np.floating):
        raise InputError(f"image of dtype {raw.dtype}: pass uint8 (0..255) or floats in [0, 1] "
                         "(e.g. x.to(torch.uint8) or x / 255)")
    a = np.nan_to_num(raw.astype(np.float32), nan=0.0)
    if a.size:
        lo, hi = float(a.min()), float(a.max())
        if lo < -TOLERANCE or hi > 1 + TOLERANCE:
            raise InputError(f"float image values must be in [0, 1], got [{lo:.3g}, {hi:.3g}]: {advice(lo, hi)}")
    return np.clip(a, 0.0, 1.0)


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(H, W)`` of an image in any accepted form."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3:
        last = _channels_last(shape, isinstance(image, torch.Tensor))
        return (int(shape[0]), int(shape[1])) if last else (int(shape[1]), int(shape[2]))
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    raise InputError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {shape}")


def to_tensor(image: ImageLike) -> torch.Tensor:
    """Any accepted image as a float32 ``(3, H, W)`` tensor in [0, 1] (what camkit models take)."""
    return torch.from_numpy(np.ascontiguousarray(_hwc(image).transpose(2, 0, 1)))


def to_pil(image: ImageLike) -> Image.Image:
    """Any accepted image (see the module docstring) as an RGB PIL image."""
    return Image.fromarray((_hwc(image) * 255 + 0.5).astype(np.uint8), mode="RGB")


def _map2d(m: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map in [0, 1] resized bilinearly to ``size`` = (H, W)."""
    a = _np(m)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise InputError(f"a map must be 2-D (h, w), got shape {tuple(_np(m).shape)}; for a batch or TopK "
                         "maps use camkit.viz.show(explanation, images), or pick one: maps[i] / maps[i, k]")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    if a.size and (a.min() < -TOLERANCE or a.max() > 1 + TOLERANCE):
        raise InputError(f"map values must be in [0, 1] (Explanation.maps are), got [{a.min():.3g}, {a.max():.3g}]; "
                         "min-max normalise it first, e.g. camkit.core.postprocess.normalize(m)")
    if a.shape != size:
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        a = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(a, 0.0, 1.0)


def _colormap(values: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps[cmap](values)[..., :3].astype(np.float32)


def heatmap(m: ArrayLike, cmap: str = "jet", size: Optional[tuple[int, int]] = None) -> Image.Image:
    """A map in [0, 1] coloured with ``cmap`` (resized to ``size`` = (H, W) when given)."""
    a = _np(m).squeeze()
    a = _map2d(a, size or (int(a.shape[-2]), int(a.shape[-1])))
    return to_pil(_colormap(a, cmap))


def overlay(image: ImageLike, m: ArrayLike, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """The map (resized bilinearly to the image) coloured with ``cmap`` and blended over the image:
    ``(1 - alpha) * image + alpha * colour(map)``, at the image's size.

    ``image``: PIL, uint8 or float in [0, 1], HWC or CHW (see the module docstring). A map computed
    on a letterboxed or cropped input needs `to_original` first; a plain resize is undone here."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    img = _hwc(image)
    heat = _colormap(_map2d(m, img.shape[:2]), cmap)
    return to_pil((1 - alpha) * img + alpha * heat)


def attribution(a: ArrayLike, percentile: float = 99.0) -> Image.Image:
    """A signed (3, H, W) attribution (Guided Backprop, Guided Grad-CAM) as an image: 0.5 grey is zero,
    values scaled by the ``percentile`` of their absolute value (so a few outliers do not wash it out)."""
    x = _np(a)
    if x.ndim == 2:
        x = x[None]
    scale = float(np.percentile(np.abs(x), percentile)) if x.size else 0.0
    x = x / scale if scale > 0 else np.zeros_like(x)
    return to_pil(np.clip(0.5 + 0.5 * x, 0.0, 1.0))


def draw_boxes(image: Image.Image, boxes: ArrayLike, colour: str = "#00ff00", width: int = 2) -> Image.Image:
    """A copy of ``image`` with ``(N, 4)`` boxes ``x0, y0, x1, y1`` (x1, y1 exclusive) drawn on it."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in _np(boxes).reshape(-1, 4).tolist():
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
    return out


def grid(images: Sequence[Image.Image], cols: int, pad: int = 2, background: str = "white") -> Image.Image:
    """Images pasted in rows of ``cols`` cells (cell = the largest image), ``pad`` pixels apart."""
    if not images:
        raise InputError("grid needs at least one image")
    if cols < 1:
        raise InputError(f"cols must be >= 1, got {cols}")
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out.paste(im.convert("RGB"), (pad + c * (cw + pad), pad + r * (ch + pad)))
    return out


def encode(image: Image.Image, fmt: str = "PNG", max_side: Optional[int] = None, quality: int = 88) -> bytes:
    """``image`` encoded as PNG/JPEG bytes, first shrunk so that its longer side is <= ``max_side``."""
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    if fmt.upper() in ("JPG", "JPEG"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt.upper())
    return buf.getvalue()


def to_original(maps: torch.Tensor, image: Union[tuple[int, int], ImageLike, "Frame"], fit: str = "stretch",
                fill: float = 0.0) -> torch.Tensor:
    """Maps ``(..., h, w)`` computed on a model input back on the original image: ``(..., H, W)``.

    ``image``: the original ``(H, W)``, the image itself, or the `camkit.data.geometry.Frame`
    of its preprocessing; ``fit`` how the image was fitted to the ``(h, w)`` input (``stretch``,
    ``letterbox`` or ``crop``, see `camkit.data.geometry`): the map goes back through the same
    geometry (a plain bilinear resize for ``stretch``; pixels a crop cut off get ``fill``).
    """
    from .data.geometry import Frame

    if not isinstance(maps, torch.Tensor):
        maps = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if isinstance(image, Frame):
        frame = image
    else:
        size = image if isinstance(image, tuple) and len(image) == 2 and all(isinstance(v, int) for v in image) \
            else image_size(image)  # type: ignore[arg-type]
        frame = Frame.fit(size, (maps.shape[-2], maps.shape[-1]), fit)
    return frame.to_original(maps, fill)


# ------------------------------------------------------------------------------------------- show

def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        return ImageFont.load_default()


def _titled(picture: Image.Image, title: str, font: Any, line: int) -> Image.Image:
    """``picture`` under a white strip holding ``title`` (shortened with '…' to fit its width)."""
    out = Image.new("RGB", (picture.width, picture.height + line), "white")
    out.paste(picture.convert("RGB"), (0, line))
    draw = ImageDraw.Draw(out)
    text = title
    while text and draw.textlength(text, font=font) > picture.width - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.text((2, 1), text, fill="black", font=font)
    return out


def _fit_cell(picture: Image.Image, cell: int) -> Image.Image:
    scale = cell / max(picture.size)
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BILINEAR)


def _class_name(labels: Union[Sequence[str], Mapping[int, str], Callable[[int], str], None], c: int) -> str:
    if labels is None:
        return f"class {c}"
    if callable(labels):
        return str(labels(c))
    try:
        return str(labels[c]).split(",")[0]
    except (IndexError, KeyError):
        return f"class {c}"


def _probability(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def _columns(e: "Explanation", b: int, grid_dims: int = 2
             ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor], bool]:
    """``(maps (B, K, ...), targets (B, K) or None, scores (B, K), probabilities (B, K) or None, signed)``;
    ``signed``: the method's ``output`` is ``"attribution"`` (Guided Backprop: ``(B, [K,] C, *grid)``)
    rather than [0, 1] maps ``(B, [K,] *grid)``; the grid has ``grid_dims`` axes ((H, W) or (T, H, W))."""
    maps, targets, scores = e.maps.detach().float().cpu(), e.targets, e.scores.detach().float().cpu()
    signed = e.output == "attribution"
    if maps.dim() == grid_dims + (2 if signed else 1):  # one target per image: no K dimension
        maps = maps.unsqueeze(1)
    if maps.shape[0] != b:
        raise InputError(f"the explanation has {maps.shape[0]} images but {b} were given")
    scores = scores.reshape(b, -1)
    t = None if targets is None else targets.detach().cpu().reshape(b, -1)
    probs = None
    if e.logits is not None and t is not None and e.logits.dim() == 2:
        probs = e.logits.detach().float().cpu().softmax(1).gather(1, t)
    return maps, t, scores, probs, signed


def show(
    explanation: Union["Explanation", Mapping[str, "Explanation"]],
    images: Union[torch.Tensor, Sequence[ImageLike]],
    labels: Union[Sequence[str], Mapping[int, str], Callable[[int], str], None] = None,
    *,
    boxes: Optional[Sequence[Any]] = None,
    frames: Optional[Sequence["Frame"]] = None,
    titles: Optional[Sequence[str]] = None,
    cell: int = 224,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Image.Image:
    """A labelled grid: one row per image, the image then one overlay per class (TopK) and method.

    ``explanation``: what a method's ``explain`` returned, or ``{"name": explanation, ...}`` for one
    column group per method. ``images``: the explained batch ``(B, 3, H, W)`` or one image per row in
    any accepted form, e.g. the original photos (maps are brought to each image's size; pass the
    ``frames`` of a letterbox/crop preprocessing to undo it exactly). ``labels``: class names, a
    mapping or a callable; by default the names the explanation carries (``categories``, the
    ``model.categories`` of camkit's zoo and loaded models), else ``class N``. Titles: class name
    and probability (softmax of the logits; the raw score for a callable target). ``boxes``: per image, ``(N, 4)`` boxes
    ``x0, y0, x1, y1`` in that image's pixels, drawn on every cell of its row. Guided Backprop
    attributions are drawn with `attribution`. Returns a PIL image (shown inline by Jupyter).
    """
    groups = dict(explanation) if isinstance(explanation, Mapping) else {"": explanation}
    if not groups:
        raise InputError("show needs at least one explanation")
    if labels is None:  # the model's class names, as the explanation recorded them
        labels = next((e.categories for e in groups.values() if getattr(e, "categories", None)), None)
    rows = list(images) if not isinstance(images, torch.Tensor) or images.dim() == 4 else [images]
    b = len(rows)
    for name, given in (("boxes", boxes), ("frames", frames), ("titles", titles)):
        if given is not None and len(given) != b:
            raise InputError(f"{name} has {len(given)} entries for {b} images")
    font = _font(max(10, cell // 16))
    line = max(10, cell // 16) + 6
    columns = {name: _columns(e, b) for name, e in groups.items()}
    cells: list[Image.Image] = []
    ncols = 1 + sum(c[0].shape[1] for c in columns.values())
    for i, image in enumerate(rows):
        base = to_pil(image)
        mark = (lambda pic: draw_boxes(pic, boxes[i], width=max(2, pic.width // 150))) if boxes is not None \
            and len(boxes[i]) else (lambda pic: pic)
        cells.append(_titled(_fit_cell(mark(base), cell), titles[i] if titles else f"image {i}", font, line))
        for name, (maps, t, scores, probs, signed) in columns.items():
            for k in range(maps.shape[1]):
                m = to_original(maps[i, k], frames[i] if frames is not None else (base.height, base.width))
                pic = attribution(m) if signed else overlay(base, m, alpha=alpha, cmap=cmap)
                what = _class_name(labels, int(t[i, k])) if t is not None else "target"
                value = _probability(float(probs[i, k])) if probs is not None else f"score {float(scores[i, k]):.3g}"
                title = f"{name + ': ' if name else ''}{what} {value}"
                cells.append(_titled(_fit_cell(mark(pic), cell), title, font, line))
    return grid(cells, cols=ncols, pad=4)


# ------------------------------------------------------------------------------ clips and volumes


def _frames(frames: Union[torch.Tensor, Sequence[ImageLike]]) -> list[ImageLike]:
    """T frames: a ``(T, C, H, W)`` tensor or array (``(T, H, W, C)`` arrays too), or a list of images."""
    return list(frames)


def _map_frames(m: ArrayLike, t: int) -> torch.Tensor:
    """A ``(T', h, w)`` map as ``(t, h, w)``: resampled linearly in time when ``T' != t``."""
    a = torch.as_tensor(_np(m))
    if a.dim() != 3:
        raise InputError(f"a clip's map must be (T, H, W), got shape {tuple(a.shape)}; pick one: maps[i] / maps[i, k]")
    if a.shape[0] != t:
        a = torch.nn.functional.interpolate(a[None, None], size=(t, *a.shape[1:]), mode="trilinear",
                                            align_corners=False)[0, 0]
    return a


def clip_overlays(frames: Union[torch.Tensor, Sequence[ImageLike]], m: ArrayLike, alpha: float = 0.5,
                  cmap: str = "jet") -> list[Image.Image]:
    """Frame t of ``frames`` with map frame t over it (`overlay`), for every frame.

    ``frames``: T images (a ``(T, 3, H, W)`` tensor such as ``VideoClip.frames``, or a list; for a
    model input ``x`` of shape ``(B, 3, T, H, W)`` pass ``x[i].transpose(0, 1)``); ``m``: a ``(T, h, w)``
    map in [0, 1] (a map of another length is resampled in time)."""
    fr = _frames(frames)
    return [overlay(f, mt, alpha=alpha, cmap=cmap) for f, mt in zip(fr, _map_frames(m, len(fr)))]


def frame_strip(frames: Union[torch.Tensor, Sequence[ImageLike]], m: ArrayLike, *, cols: Optional[int] = None,
                cell: int = 160, titles: Optional[Sequence[str]] = None, alpha: float = 0.5,
                cmap: str = "jet") -> Image.Image:
    """The clip's overlays (`clip_overlays`) side by side (``cols`` per row, default all), each
    titled (default ``frame t``)."""
    pics = clip_overlays(frames, m, alpha=alpha, cmap=cmap)
    return _strip(pics, titles or [f"frame {t}" for t in range(len(pics))], cols, cell)


def _strip(pics: Sequence[Image.Image], titles: Sequence[str], cols: Optional[int], cell: int) -> Image.Image:
    if len(titles) != len(pics):
        raise InputError(f"got {len(titles)} titles for {len(pics)} pictures")
    font = _font(max(10, cell // 14))
    line = max(10, cell // 14) + 6
    cells = [_titled(_fit_cell(p, cell), t, font, line) for p, t in zip(pics, titles)]
    return grid(cells, cols=cols or len(cells), pad=3)


def save_clip(path: Union[str, "os.PathLike[str]"], frames: Union[torch.Tensor, Sequence[ImageLike]], m: ArrayLike,
              fps: float = 4.0, alpha: float = 0.5, cmap: str = "jet") -> "Path":
    """The animated overlay of a clip's map: ``.gif`` (Pillow) or ``.mp4`` (PyAV); returns the path."""
    from .data.video import save_animation

    return save_animation(path, clip_overlays(frames, m, alpha=alpha, cmap=cmap), fps=fps)


def _physical(picture: Image.Image, rows: float, cols: float, cell: int) -> Image.Image:
    """``picture`` resized so that its sides follow the physical extents ``rows`` x ``cols`` (mm), the longer ``cell``."""
    scale = cell / max(rows, cols)
    return picture.resize((max(1, round(cols * scale)), max(1, round(rows * scale))), Image.BILINEAR)


def volume_slices(volume: ArrayLike, m: ArrayLike, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  voxel: Optional[Sequence[int]] = None, cell: int = 224, alpha: float = 0.5,
                  cmap: str = "jet") -> Image.Image:
    """Three orthogonal slices of a volume through ``voxel`` (default: the map's maximum), the map over each.

    ``volume``: ``(D, H, W)`` or ``(C, D, H, W)`` (the first channel is drawn) in [0, 1]; ``m``: the map
    on the same grid. Slices, in array order (no anatomical reorientation): ``(H, W)`` at ``d``,
    ``(D, W)`` at ``h``, ``(D, H)`` at ``w``, each drawn with the physical aspect of ``spacing``
    (voxel sizes along D, H, W, e.g. ``Volume.spacing``), a cross marking the voxel."""
    from .data.volume import peak_voxel, slices_through

    v = torch.as_tensor(_np(volume))
    v = v[0] if v.dim() == 4 else v
    mm = torch.as_tensor(_np(m))
    if v.dim() != 3 or tuple(mm.shape) != tuple(v.shape):
        raise InputError(f"volume_slices needs a (D, H, W) volume and a map of the same shape, got "
                         f"{tuple(v.shape)} and {tuple(mm.shape)}; bring the map to the volume's grid first "
                         "(Volume.to_original)")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"spacing must be three positive voxel sizes (D, H, W), got {tuple(spacing)}")
    at = tuple(int(c) for c in voxel) if voxel is not None else peak_voxel(mm)
    sd, sh, sw = (float(s) for s in spacing)
    extents = [(sh, sw), (sd, sw), (sd, sh)]  # per-voxel (rows, cols) of each slice
    marks = [(at[1], at[2]), (at[0], at[2]), (at[0], at[1])]
    names = [f"d={at[0]}", f"h={at[1]}", f"w={at[2]}"]
    pics = []
    for img, mp, (rs, cs), (r, c) in zip(slices_through(v, at), slices_through(mm, at), extents, marks):  # type: ignore[arg-type]
        pic = overlay(img.clamp(0, 1), mp, alpha=alpha, cmap=cmap)
        big = _physical(pic, img.shape[0] * rs, img.shape[1] * cs, cell)
        y, x = (r + 0.5) * big.height / img.shape[0], (c + 0.5) * big.width / img.shape[1]
        draw = ImageDraw.Draw(big)
        arm = max(3, cell // 25)
        draw.line([(x - arm, y), (x + arm, y)], fill="white", width=1)
        draw.line([(x, y - arm), (x, y + arm)], fill="white", width=1)
        pics.append(big)
    return _strip(pics, names, 3, cell)


def _explained(e: "Explanation", x: torch.Tensor, i: int, k: int) -> tuple[torch.Tensor, torch.Tensor, bool, str]:
    """Input ``i`` ``(C, T, H, W)`` of a 3-D explanation, its map ``k``, whether it is signed, and a caption."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        raise InputError(f"give the explained input, (B, C, T, H, W) or (C, T, H, W); got {getattr(x, 'shape', type(x))}")
    x = x if x.dim() == 5 else x[None]
    maps, t, scores, probs, signed = _columns(e, x.shape[0], grid_dims=3)
    if not (0 <= i < maps.shape[0] and 0 <= k < maps.shape[1]):
        raise InputError(f"no map [{i}, {k}]: the explanation holds {maps.shape[0]} input(s) x {maps.shape[1]} map(s)")
    what = _class_name(e.categories, int(t[i, k])) if t is not None else "target"
    value = _probability(float(probs[i, k])) if probs is not None else f"score {float(scores[i, k]):.3g}"
    return x[i].detach().float().cpu(), maps[i, k], signed, f"{what} {value}"


def show_clip(e: "Explanation", clip: torch.Tensor, i: int = 0, k: int = 0, *, cols: Optional[int] = None,
              cell: int = 160, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Clip ``i``'s map ``k`` as a frame strip, titled with the class and its probability.

    ``clip``: the explained input ``(B, 3, T, H, W)``. A method whose ``output`` is ``"attribution"``
    (signed, ``(C, T, H, W)``) is drawn with `attribution` per frame, a map over the frames."""
    x, m, signed, caption = _explained(e, clip, i, k)
    frames = x.transpose(0, 1)
    titles = [f"{caption} · frame {t}" if t == 0 else f"frame {t}" for t in range(frames.shape[0])]
    if signed:
        return _strip([attribution(m[:, t]) for t in range(m.shape[1])], titles, cols, cell)
    return frame_strip(frames, m, cols=cols, cell=cell, titles=titles, alpha=alpha, cmap=cmap)


def show_volume(e: "Explanation", volume: torch.Tensor, i: int = 0, k: int = 0, *,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), cell: int = 224, alpha: float = 0.5,
                cmap: str = "jet") -> Image.Image:
    """Volume ``i``'s map ``k`` as three orthogonal slices through its maximum (`volume_slices`),
    with the class and its probability as a caption. ``volume``: the explained input ``(B, C, D, H, W)``;
    an ``"attribution"`` output is drawn as its absolute value summed over channels, scaled to [0, 1]."""
    x, m, signed, caption = _explained(e, volume, i, k)
    if signed:
        m = m.abs().sum(0)
        m = m / m.max().clamp(min=1e-12)
    slices = volume_slices(x, m, spacing=spacing, cell=cell, alpha=alpha, cmap=cmap)
    font = _font(max(10, cell // 14))
    return _titled(slices, caption, font, max(10, cell // 14) + 6)
