"""``camkit explain``: maps of images, each written as a picture (PNG) beside its raw map (``.npy``).

``--task classify`` (default): each image becomes the model's input (``--fit``), its five most probable
classes are printed, and per method and target the map goes back through the same geometry onto the
image at ``--size``: ``STEM_METHOD`` (``STEM_METHOD_kK`` for ``--target topK``).

``--task detect|segment``: images are read at their own size (detectors and segmenters resize inside;
the maps come back in the image's frame). ``detect`` writes ``STEM_detections.png`` (every detection
with score >= ``--min-score`` drawn) and, per method and detection, an overlay with its box
(``STEM_METHOD_detK``); ``segment`` writes, per method and class, an overlay (``STEM_METHOD_CLASS``).

A method whose ``output`` is ``"attribution"`` (signed, pixel space: Guided Backprop) is drawn as a
picture of its own; a ``"cam"`` map as an overlay on its image.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from camkit import TopK, viz
from camkit.bench import sources
from camkit.core.outputs import to_logits
from camkit.targets.segmentation import Segmentation, segmentation_logits
from camkit.data import resize_image
from camkit.data.geometry import Frame, fit
from camkit.data.imageio import read_image
from camkit.errors import CamkitError, InputError
from camkit.methods import get, to_image

from .common import add_device_options, add_forward_options, checked_precision, csv_list, model_spec, stem, warn

if TYPE_CHECKING:
    from camkit.targets.detection import Detection
    from camkit.methods import Explanation

DEFAULT_OUT = "camkit-explain"
Picture = tuple[Optional[Frame], torch.Tensor]  # the frame a map goes back through (None: as computed), its image


def add_parser(sub: Any) -> None:
    """Register ``camkit explain`` on the subcommands ``sub``."""
    e = sub.add_parser("explain", help="maps of one or more images", description="Explain images with one or "
                       "more methods: writes overlays (PNG) and raw maps (.npy), prints the predicted classes.")
    e.add_argument("images", nargs="+", metavar="IMAGE")
    e.add_argument("--model", required=True, help="zoo model name, timm:NAME, hf:DIR or torchvision:NAME (camkit list)")
    e.add_argument("--weights", default=None, help="state-dict path, a named weights set, or 'random'")
    e.add_argument("--method", default="gradcam", help="method name(s), comma-separated (default: gradcam); "
                   "meta-methods take a base: sess:gradcam++, finercam:layercam")
    e.add_argument("--layer", default=None, help="layer name (default: the model's default layer)")
    e.add_argument("--target", default="top1", help="top1, topK (e.g. top3), a class index or a class name; "
                   "--task segment: classes (comma-separated; default: every predicted class)")
    e.add_argument("--task", default="classify", choices=("classify", "detect", "segment"),
                   help="detect: one map per detection (torchvision detectors); segment: one map per class")
    e.add_argument("--min-score", type=float, default=0.5, help="--task detect: explain detections scoring at least this")
    e.add_argument("-o", "--output", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    e.add_argument("--size", default="original", help="size of the written overlays and .npy maps: original "
                   "(each image's own, default), model (the model's input) or N (longer side N pixels)")
    e.add_argument("--fit", default="stretch", choices=("stretch", "letterbox", "crop"),
                   help="how an image becomes the model's input: stretch (resize, default), letterbox (resize "
                   "keeping the aspect ratio, pad) or crop (resize to cover, centre crop); maps go back the same way")
    add_forward_options(e)
    add_device_options(e)
    e.set_defaults(func=cmd_explain)


# ---------------------------------------------------------------------------------- shared pieces


def _name(categories: Optional[Sequence[str]], c: int) -> str:
    """Class ``c``'s name, or its index when the model names no classes."""
    return str(categories[c]) if categories and 0 <= c < len(categories) else str(c)


def _slug(text: str) -> str:
    """``text`` safe in a file name (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9+_-]+", "_", text).strip("_") or "x"


def _read(path: str) -> torch.Tensor:
    """The image at ``path`` as ``(C, H, W)``; a one-line error when it cannot be read."""
    try:
        return read_image(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise CamkitError(f"cannot read image {path!r}: {exc}") from exc


def _picture(image: torch.Tensor, m: torch.Tensor, attribution: bool) -> Image.Image:
    """A map as an overlay on its image, or an attribution as a picture of its own."""
    return viz.to_pil(to_image(m)) if attribution else viz.overlay(image, m)


def _save(base: Path, picture: Image.Image, m: torch.Tensor) -> None:
    """``BASE.png`` (the picture) and ``BASE.npy`` (the raw map)."""
    picture.save(f"{base}.png")
    np.save(f"{base}.npy", m.detach().cpu().numpy())


# ------------------------------------------------------------------------------------------ classify


def _target(spec: str, categories: Optional[list[str]]) -> Any:
    """``top1`` -> None, ``topK`` -> TopK(K), an int or a class name -> its index."""
    s = spec.strip()
    m = re.fullmatch(r"top(\d+)", s.lower())
    if m:
        k = int(m.group(1))
        return None if k == 1 else TopK(k)
    if s.lstrip("-").isdigit():
        return int(s)
    if categories:
        exact = [i for i, c in enumerate(categories) if c.lower() == s.lower()]
        partial = [i for i, c in enumerate(categories) if s.lower() in [p.strip().lower() for p in c.split(",")]]
        hits = exact or partial
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise CamkitError(f"class name {s!r} is ambiguous: {[categories[i] for i in hits[:5]]}")
    raise CamkitError(f"--target must be top1, topK (e.g. top5), a class index or a class name; got {s!r}")


def _picture_size(spec: str, original: tuple[int, int], model_size: tuple[int, int]) -> tuple[int, int]:
    """``--size``: ``original`` (the image's own), ``model`` (the input the map was computed on), or N
    (the original's aspect, longer side N pixels)."""
    if spec == "original":
        return original
    if spec == "model":
        return model_size
    if not spec.isdigit() or int(spec) < 1:
        raise CamkitError(f"--size must be original, model or a number of pixels, got {spec!r}")
    scale = int(spec) / max(original)
    return max(1, round(original[0] * scale)), max(1, round(original[1] * scale))


def _inputs(paths: Sequence[str], model: nn.Module, size_spec: str, how: str) -> tuple[torch.Tensor, list[Picture]]:
    """The model's input batch ``(B, C, H, W)`` and, per image, where its maps are drawn."""
    size = tuple(model.input_size)
    images, pictures = [], []
    for path in paths:
        original = _read(path)
        xi, frame = fit(original, size, how, interpolation=getattr(model, "interpolation", "bilinear"))
        images.append(xi)
        out_size = _picture_size(size_spec, frame.original, size)
        if size_spec == "model":
            pictures.append((None, xi))
        else:  # the map goes back through the preprocessing geometry, onto the image at out_size
            pictures.append((Frame.fit(out_size, size, how), resize_image(original, out_size)))
    return torch.stack(images), pictures


def _print_predictions(model: nn.Module, x: torch.Tensor, paths: Sequence[str], cats: Optional[list[str]]) -> None:
    """Each image's five most probable classes, with their probabilities."""
    with torch.no_grad():
        probs = to_logits(model(x)).float().softmax(1)
    for path, p in zip(paths, probs):
        top = p.topk(min(5, p.numel()))
        preds = ", ".join(f"{_name(cats, int(i))} ({float(v):.3f})" for v, i in zip(top.values, top.indices))
        print(f"{path}: {preds}")


def _write_maps(e: Explanation, method: str, paths: Sequence[str], pictures: list[Picture], out: Path,
                cats: Optional[list[str]]) -> None:
    """One method's maps, per image and target: ``STEM_METHOD[_kK].png`` and ``.npy``."""
    attribution = e.output == "attribution"
    maps = e.maps if e.maps.dim() == (5 if attribution else 4) else e.maps.unsqueeze(1)
    classes = e.targets.reshape(len(paths), -1) if e.targets is not None else None
    for i, path in enumerate(paths):
        frame, image = pictures[i]
        for k in range(maps.shape[1]):
            c = int(classes[i, k]) if classes is not None else None
            suffix = "" if maps.shape[1] == 1 else f"_k{k + 1}"
            base = out / f"{stem(path)}_{re.sub(r'[^A-Za-z0-9+_-]', '', method)}{suffix}"
            m = maps[i, k].detach().cpu() if frame is None else frame.to_original(maps[i, k].detach().cpu())
            _save(base, _picture(image, m, attribution), m)
            print(f"  {method} -> {base}.png ({_name(cats, c) if c is not None else 'callable'}) + .npy")


def cmd_explain(args: argparse.Namespace) -> int:
    """``camkit explain``: print the predicted classes, write each method's maps."""
    if args.task != "classify":
        return cmd_explain_task(args)
    spec = model_spec(args)
    model = sources.load_model(spec, args.device)
    if sources.random_weights(spec):
        warn("explain", sources.random_weights_warning(spec))
    x, pictures = _inputs(args.images, model, args.size, args.fit)
    x = x.to(args.device)
    cats = getattr(model, "categories", None)
    targets = _target(args.target, cats)
    precision = checked_precision(args)
    layer = args.layer or "auto"  # "auto": the zoo model's default_layer (FullGrad: all its biased layers)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _print_predictions(model, x, args.images, cats)
    for method in csv_list(args.method):
        cls = get(method)
        e = cls(model, layer=layer, precision=precision, channels_last=args.channels_last).explain(x, targets=targets)
        _write_maps(e, cls.name, args.images, pictures, out, cats)
    print(f"camkit explain: maps written to {out.resolve()}")
    return 0


# ------------------------------------------------------------------------------ detect and segment


@dataclass
class _Slots:
    """What an image's maps explain: the target, and per map its file-name slot and caption."""

    target: Any  # a Detection or a Segmentation
    names: list[str]
    captions: list[str]
    boxes: bool  # draw each detection's box on its map


def segment_classes(spec: str, categories: Optional[Sequence[str]], predicted: list[int]) -> list[int]:
    """``--target`` for segmentation: ``top1``/``all`` -> the classes the model predicts in the image
    (background left out when ``categories[0]`` names it), else comma-separated indices or class names."""
    if spec.strip().lower() in ("top1", "all", "predicted"):
        background = bool(categories) and str(categories[0]).strip("_").lower() in ("background", "bg")
        return [c for c in predicted if not (background and c == 0)] or predicted
    out = []
    for item in csv_list(spec):
        if item.lstrip("-").isdigit():
            out.append(int(item))
            continue
        hits = [i for i, c in enumerate(categories or []) if str(c).lower() == item.lower()]
        if len(hits) != 1:
            raise CamkitError(f"--target {item!r} is neither a class index nor a class name of this model")
        out.append(hits[0])
    return out


def _detections_picture(image: torch.Tensor, target: Detection, scores: torch.Tensor,
                        categories: Optional[Sequence[str]]) -> Image.Image:
    """The image with every detection's box, class and score drawn."""
    pic = viz.draw_boxes(viz.to_pil(image), target.boxes[0])
    draw = ImageDraw.Draw(pic)
    for box, label, score in zip(target.boxes[0].tolist(), target.labels[0].tolist(), scores.tolist()):
        draw.text((box[0] + 2, box[1] + 1), f"{_name(categories, label)} {score:.2f}", fill="#00ff00")
    return pic


def _detect(output: Any, x: torch.Tensor, path: str, min_score: float, cats: Optional[Sequence[str]],
            picture: Path) -> _Slots:
    """The detections scoring >= ``min_score``: drawn into ``picture``, printed, one slot each."""
    from camkit.targets.detection import Detection  # torchvision: only when detecting

    target = Detection.from_output(output, min_score)
    scores = output[0]["scores"][output[0]["scores"] >= min_score]
    captions = [f"{_name(cats, int(lab))} {float(s):.2f} {[round(v) for v in box.tolist()]}"
                for box, lab, s in zip(target.boxes[0], target.labels[0], scores)]
    _detections_picture(x[0], target, scores, cats).save(picture)
    print(f"{path}: {len(captions)} detection(s) with score >= {min_score}: " + "; ".join(captions))
    return _Slots(target, [f"det{k + 1}" for k in range(len(captions))], captions, boxes=True)


def _segment(output: Any, path: str, spec: str, cats: Optional[Sequence[str]]) -> _Slots:
    """The classes ``spec`` asks for among those present (printed), one slot each."""
    predicted = torch.unique(segmentation_logits(output)[0].argmax(0)).tolist()
    classes = segment_classes(spec, cats, predicted)
    captions = [_name(cats, c) for c in classes]
    print(f"{path}: classes present: {', '.join(_name(cats, c) for c in predicted)}")
    return _Slots(Segmentation([classes]), [_slug(c) for c in captions], captions, boxes=False)


def _write_slot_maps(model: nn.Module, x: torch.Tensor, slots: _Slots, method: str, prefix: Path,
                     layer: Optional[str]) -> list[Path]:
    """One method's map per slot: ``PREFIX_METHOD_SLOT.png`` and ``.npy``; returns the PNGs."""
    cls = get(method)
    e = cls(model, layer=layer or "auto").explain(x, targets=slots.target)
    attribution = e.output == "attribution"
    maps = e.maps.reshape(len(slots.names), *e.maps.shape[-3 if attribution else -2:])
    written = []
    for k, (slot, caption) in enumerate(zip(slots.names, slots.captions)):
        base = Path(f"{prefix}_{_slug(cls.name)}_{slot}")
        pic = _picture(x[0], maps[k], attribution)
        if slots.boxes:
            pic = viz.draw_boxes(pic, slots.target.boxes[0][k:k + 1])
        _save(base, pic, maps[k])
        written.append(Path(f"{base}.png"))
        print(f"  {cls.name} -> {base}.png ({caption}) + .npy")
    return written


def explain_task(
    model: nn.Module, paths: Sequence[str], task: str, methods: Sequence[str], out: Path, *,
    layer: Optional[str] = None, target: str = "top1", min_score: float = 0.5, device: str = "cpu",
) -> list[Path]:
    """Write the pictures and maps of ``--task detect|segment`` (module doc); returns the PNG paths written."""
    if task not in ("detect", "segment"):
        raise InputError(f"task must be 'detect' or 'segment', got {task!r}")
    if task == "detect" and target != "top1":
        raise InputError("--target does not apply to --task detect: every detection scoring >= --min-score is explained")
    out.mkdir(parents=True, exist_ok=True)
    cats = getattr(model, "categories", None)
    written: list[Path] = []
    for path in paths:
        x = _read(path)[None].to(device)
        with torch.no_grad():
            output = model(x)
        if task == "detect":
            written.append(out / f"{stem(path)}_detections.png")
            slots = _detect(output, x, path, min_score, cats, written[-1])
        else:
            slots = _segment(output, path, target, cats)
        for method in methods:
            written += _write_slot_maps(model, x, slots, method, out / stem(path), layer)
    return written


def cmd_explain_task(args: argparse.Namespace) -> int:
    """The ``--task detect|segment`` branch of ``camkit explain``."""
    model = sources.load_model(model_spec(args), args.device)
    explain_task(model, args.images, args.task, csv_list(args.method), Path(args.output), layer=args.layer,
                 target=args.target, min_score=args.min_score, device=args.device)
    return 0
