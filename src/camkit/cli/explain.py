"""``camkit explain``: maps of images, each written as a picture (PNG) beside its raw map (``.npy``).

``--task classify`` (default): each image becomes the model's input (``--fit``), its five most probable
classes are printed, and per method and target the map goes back through the same geometry onto the
image at ``--size``: ``STEM_METHOD`` (``STEM_METHOD_kK`` for ``--target topK``).

``--task detect|segment``: images are read at their own size (detectors and segmenters resize inside;
the maps come back in the image's frame; ``--fit`` and ``--size model`` do not apply and are refused).
``detect`` writes ``STEM_detections.png`` (every detection with score >= ``--min-score`` drawn) and,
per method and detection, an overlay with its box (``STEM_METHOD_detK``); ``segment`` writes, per
method and class, an overlay (``STEM_METHOD_CLASS``). At most ``--max-maps`` maps per image and
method (the highest-scoring detections, the largest classes); how many were left out is printed.

Every task warns on stderr when the model runs with random weights, and runs the methods with
``--precision``, ``--channels-last``, ``--layer`` (comma-separated: several layers fused) and ``--layout``.

A method whose ``output`` is ``"attribution"`` (signed, pixel space: Guided Backprop) is drawn as a
picture of its own; a ``"cam"`` map as an overlay on its image.

Video files and NIfTI volumes (a video or volume model) go to `.explain3d`: a frame strip and
an animated GIF per map for a video, a NIfTI map aligned with the scan and three orthogonal slices
for a volume.
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
from camkit.layers import model_task
from camkit.methods import get, to_image

from .common import (
    add_device_options, add_forward_options, checked_precision, csv_list, model_options, model_spec, stem, warn,
)
from .explain3d import explain_files, file_kind

if TYPE_CHECKING:
    from camkit.methods import Explanation

DEFAULT_OUT = "camkit-explain"
_TASK_FLAG = {"detection": "detect", "segmentation": "segment"}  # a model's task -> the --task that explains it
MAX_MAPS = 10  # --task detect|segment: maps per image and method (a random detector finds 100 boxes: 200 files)
Picture = tuple[Optional[Frame], torch.Tensor]  # the frame a map goes back through (None: as computed), its image


def add_parser(sub: Any) -> None:
    """Register ``camkit explain`` on the subcommands ``sub``."""
    e = sub.add_parser("explain", help="maps of one or more images", description="Explain images with one or "
                       "more methods: writes overlays (PNG) and raw maps (.npy), prints the predicted classes.")
    e.add_argument("images", nargs="+", metavar="FILE", help="images; or videos (.mp4, .avi, ...) or NIfTI "
                   "volumes (.nii, .nii.gz) for a video or volume model")
    e.add_argument("--model", required=True, help="zoo model name, timm:NAME, hf:DIR, torchvision:NAME (also video "
                   "models: r3d_18, ...) or monai:NAME (camkit list)")
    e.add_argument("--weights", default=None, help="state-dict path, a named weights set, or 'random'")
    e.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="a keyword option for the model's builder, repeatable (monai:densenet121 --model-option "
                   "spatial_dims=3 --model-option in_channels=1 --model-option out_channels=2)")
    e.add_argument("--method", default="gradcam", help="method name(s), comma-separated (default: gradcam); "
                   "meta-methods take a base: sess:gradcam++, finercam:layercam")
    e.add_argument("--layer", default=None, help="layer name, or several comma-separated (default: the automatic "
                   "choice; camkit layers MODEL lists them)")
    e.add_argument("--layout", default=None, choices=("nchw", "nhwc", "tokens", "ncthw", "nthwc"),
                   help="force how the layer's output is read (default: from its shape and the model's evidence)")
    e.add_argument("--target", default="top1", help="top1, topK (e.g. top3), a class index or a class name; "
                   "--task segment: classes (comma-separated; default: every predicted class)")
    e.add_argument("--task", default="classify", choices=("classify", "detect", "segment"),
                   help="detect: one map per detection (torchvision detectors); segment: one map per class")
    e.add_argument("--min-score", type=float, default=0.5, help="--task detect: explain detections scoring at least this")
    e.add_argument("--max-maps", type=int, default=MAX_MAPS, help="--task detect|segment: at most this many maps per "
                   f"image and method, the highest-scoring detections or largest classes (default: {MAX_MAPS})")
    e.add_argument("-o", "--output", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    e.add_argument("--size", default="original", help="size of the written overlays and .npy maps: original "
                   "(each image's own, default), model (the model's input; --task classify) or N (longer side N pixels)")
    e.add_argument("--fit", default=None, choices=("stretch", "letterbox", "crop"),
                   help="--task classify: how an image becomes the model's input: stretch (resize, default), letterbox "
                   "(resize keeping the aspect ratio, pad) or crop (resize to cover, centre crop); maps go back the same way")
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


def _layer(spec: Optional[str]) -> Any:
    """``--layer``: None -> ``"auto"``, one name, or a list of comma-separated names (fused)."""
    names = csv_list(spec or "")
    return "auto" if not names else names[0] if len(names) == 1 else names


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """What every method of ``camkit explain`` is built with: layer, layout, precision, channels-last."""
    return {"layer": _layer(args.layer), "layout": args.layout, "precision": checked_precision(args),
            "channels_last": args.channels_last}


def _load(args: argparse.Namespace) -> nn.Module:
    """The model of ``--model``/``--weights``, with a warning on stderr when its weights are random."""
    spec = model_spec(args)
    model = sources.load_model(spec, args.device, model_options(args.model_option))
    if sources.random_weights(spec):
        warn("explain", sources.random_weights_warning(spec))
    return model


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
    model = _load(args)
    task = getattr(model, "task", None) or model_task(model)
    if task in _TASK_FLAG:
        raise InputError(f"{args.model} is a {task} model: explain it with --task {_TASK_FLAG[task]}")
    kinds = {file_kind(p) for p in args.images}
    if kinds != {"image"}:
        return _explain_3d(args, model, kinds)
    x, pictures = _inputs(args.images, model, args.size, args.fit or "stretch")
    x = x.to(args.device)
    cats = getattr(model, "categories", None)
    targets = _target(args.target, cats)
    options = _method_options(args)  # layer "auto": the zoo model's default_layer (FullGrad: all its biased layers)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _print_predictions(model, x, args.images, cats)
    for method in csv_list(args.method):
        cls = get(method)
        # a method whose maps are concepts (DFF) explains no target: it writes one map per concept
        e = cls(model, **options).explain(x, targets=None if cls.output == "concepts" else targets)
        _write_maps(e, cls.name, args.images, pictures, out, cats)
    print(f"camkit explain: maps written to {out.resolve()}")
    return 0


def _explain_3d(args: argparse.Namespace, model: nn.Module, kinds: set[str]) -> int:
    """Videos and NIfTI volumes (`.explain3d`)."""
    if "image" in kinds:
        raise InputError("images and videos / volumes go to different models: explain them in separate calls")
    if args.fit is not None or args.size != "original":
        raise InputError("--fit and --size apply to images: a clip is sampled and resized to the model's input, "
                         "and a volume's map is written back on the scan's own grid")
    out = Path(args.output)
    explain_files(model, args.images, csv_list(args.method), out,
                  targets=_target(args.target, getattr(model, "categories", None)), options=_method_options(args),
                  device=args.device, predictions=_print_predictions)
    print(f"camkit explain: maps written to {out.resolve()}")
    return 0


# ------------------------------------------------------------------------------ detect and segment


@dataclass
class _Slots:
    """What an image's maps explain: the target, and per map its file-name slot and caption."""

    target: Any  # a Detection or a Segmentation
    names: list[str]
    captions: list[str]
    boxes: Optional[torch.Tensor] = None  # (K, 4): each detection's box, drawn on its map


@dataclass
class _Output:
    """Where and how big an image's pictures and maps are written."""

    prefix: Path  # OUT/STEM
    size: tuple[int, int]  # (H, W) of the written pictures and maps
    scale: tuple[float, float]  # (x, y) from the image's pixels to the written ones

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return x if tuple(x.shape[-2:]) == self.size else resize_image(x, self.size)

    def map(self, m: torch.Tensor) -> torch.Tensor:
        return m if tuple(m.shape[-2:]) == self.size else viz.to_original(m, self.size)

    def boxes(self, b: torch.Tensor) -> torch.Tensor:
        return b.detach().cpu() * torch.tensor([self.scale[0], self.scale[1]] * 2)


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


def _capped(path: str, what: str, found: int, max_maps: int) -> int:
    """How many of ``found`` maps to write; a warning naming the rest when ``--max-maps`` leaves some out."""
    if found > max_maps:
        warn("explain", f"{path}: {found} {what}; explaining the first {max_maps} ({found - max_maps} left out: "
             f"--max-maps {found} explains all)")
    return min(found, max_maps)


def _detect(output: Any, image: torch.Tensor, path: str, min_score: float, max_maps: int,
            cats: Optional[Sequence[str]], out: _Output) -> Optional[_Slots]:
    """The highest-scoring detections (>= ``min_score``, at most ``max_maps``): drawn into
    ``PREFIX_detections.png``, printed, one slot each; None (and a warning) when there is none."""
    from camkit.targets.detection import Detection  # torchvision: only when detecting

    pred = output[0]
    scores = pred["scores"].detach()
    keep = (scores >= min_score).nonzero().flatten()
    if keep.numel() == 0:
        best = f"the best scores {float(scores.max()):.3f}" if scores.numel() else "the detector found nothing at all"
        warn("explain", f"{path}: no detection scores >= {min_score} ({best}); lower --min-score to explain one")
        return None
    keep = keep[scores[keep].argsort(descending=True)][:_capped(path, f"detections score >= {min_score}",
                                                                keep.numel(), max_maps)]
    boxes, labels, scores = pred["boxes"].detach()[keep], pred["labels"].detach()[keep], scores[keep]
    captions = [f"{_name(cats, int(lab))} {float(s):.2f} {[round(v) for v in box.tolist()]}"
                for box, lab, s in zip(boxes, labels, scores)]
    pic = viz.draw_boxes(viz.to_pil(out.image(image)), out.boxes(boxes))
    draw = ImageDraw.Draw(pic)
    for box, caption in zip(out.boxes(boxes).tolist(), captions):
        draw.text((box[0] + 2, box[1] + 1), caption.rsplit(" [", 1)[0], fill="#00ff00")
    pic.save(f"{out.prefix}_detections.png")
    print(f"{path}: {len(captions)} detection(s) explained: " + "; ".join(captions))
    return _Slots(Detection([boxes], [labels], each=True), [f"det{k + 1}" for k in range(len(captions))], captions,
                  boxes=boxes)


def _segment(output: Any, path: str, spec: str, max_maps: int, cats: Optional[Sequence[str]]) -> _Slots:
    """The classes ``spec`` asks for (default: those present, largest first; at most ``max_maps``), one slot each."""
    counts = torch.bincount(segmentation_logits(output)[0].argmax(0).flatten())
    predicted = [int(c) for c in counts.argsort(descending=True) if counts[c] > 0]
    classes = segment_classes(spec, cats, predicted)
    classes = classes[:_capped(path, "classes asked for", len(classes), max_maps)]
    captions = [_name(cats, c) for c in classes]
    print(f"{path}: classes present, largest first: {', '.join(_name(cats, c) for c in predicted)}")
    return _Slots(Segmentation([classes]), [_slug(c) for c in captions], captions)


def _write_slot_maps(model: nn.Module, x: torch.Tensor, slots: _Slots, method: str, out: _Output,
                     options: dict[str, Any]) -> list[Path]:
    """One method's map per slot: ``PREFIX_METHOD_SLOT.png`` and ``.npy``; returns the PNGs."""
    cls = get(method)
    e = cls(model, **options).explain(x, targets=slots.target)
    attribution = e.output == "attribution"
    maps = e.maps.reshape(len(slots.names), *e.maps.shape[-3 if attribution else -2:])
    image = out.image(x[0].cpu())
    written = []
    for k, (slot, caption) in enumerate(zip(slots.names, slots.captions)):
        base = Path(f"{out.prefix}_{_slug(cls.name)}_{slot}")
        m = out.map(maps[k].detach().cpu())
        pic = _picture(image, m, attribution)
        if slots.boxes is not None:
            pic = viz.draw_boxes(pic, out.boxes(slots.boxes[k:k + 1]))
        _save(base, pic, m)
        written.append(Path(f"{base}.png"))
        print(f"  {cls.name} -> {base}.png ({caption}) + .npy")
    return written


def explain_task(
    model: nn.Module, paths: Sequence[str], task: str, methods: Sequence[str], out: Path, *,
    target: str = "top1", min_score: float = 0.5, max_maps: int = MAX_MAPS, size: str = "original",
    device: str = "cpu", options: Optional[dict[str, Any]] = None,
) -> list[Path]:
    """Write the pictures and maps of ``--task detect|segment`` (module doc); returns the PNG paths written.
    ``options``: what each method is built with (``layer``, ``precision``, ...; default: the automatic layer)."""
    if task not in ("detect", "segment"):
        raise InputError(f"task must be 'detect' or 'segment', got {task!r}")
    if task == "detect" and target != "top1":
        raise InputError("--target does not apply to --task detect: every detection scoring >= --min-score is explained")
    if size == "model":
        raise InputError("--size model applies to --task classify: detectors and segmenters take each image at its "
                         "own size; use --size original or a number of pixels")
    if max_maps < 1:
        raise InputError(f"--max-maps must be >= 1, got {max_maps}")
    out.mkdir(parents=True, exist_ok=True)
    cats = getattr(model, "categories", None)
    written: list[Path] = []
    for path in paths:
        x = _read(path)[None].to(device)
        h, w = x.shape[-2:]
        oh, ow = _picture_size(size, (h, w), (h, w))
        where = _Output(out / stem(path), (oh, ow), (ow / w, oh / h))
        with torch.no_grad():
            output = model(x)
        if task == "detect":
            slots = _detect(output, x[0].cpu(), path, min_score, max_maps, cats, where)
            if slots is None:
                continue
            written.append(Path(f"{where.prefix}_detections.png"))
        else:
            slots = _segment(output, path, target, max_maps, cats)
        for method in methods:
            written += _write_slot_maps(model, x, slots, method, where, options or {"layer": "auto"})
    return written


def cmd_explain_task(args: argparse.Namespace) -> int:
    """The ``--task detect|segment`` branch of ``camkit explain``."""
    if args.fit is not None:
        raise InputError("--fit applies to --task classify: detectors and segmenters take each image at its own size "
                         "and resize inside")
    model = _load(args)
    out = Path(args.output)
    explain_task(model, args.images, args.task, csv_list(args.method), out, target=args.target,
                 min_score=args.min_score, max_maps=args.max_maps, size=args.size, device=args.device,
                 options=_method_options(args))
    print(f"camkit explain: maps written to {out.resolve()}")
    return 0
