"""``camkit explain --task detect|segment``: maps of a detector's detections or a segmenter's classes.

Images are read at their own size (detectors and segmenters resize inside; the maps come back in
the image's frame). ``detect`` writes ``STEM_detections.png`` (every detection with score >=
``min_score`` drawn) and, per method and detection, an overlay with its box (``STEM_METHOD_detK``);
``segment`` writes, per method and class, an overlay (``STEM_METHOD_CLASS``). Every overlay has its
raw map beside it as ``.npy``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from . import viz
from .targets.detection import Detection
from .targets.segmentation import Segmentation, segmentation_logits
from .errors import CamkitError, InputError
from .methods import get, to_image


def _name(categories: Optional[Sequence[str]], c: int) -> str:
    return str(categories[c]) if categories and 0 <= c < len(categories) else str(c)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+_-]+", "_", text).strip("_") or "x"


def segment_classes(spec: str, categories: Optional[Sequence[str]], predicted: list[int]) -> list[int]:
    """``--target`` for segmentation: ``top1``/``all`` -> the classes the model predicts in the image
    (background left out when ``categories[0]`` names it), else comma-separated indices or class names."""
    if spec.strip().lower() in ("top1", "all", "predicted"):
        background = bool(categories) and str(categories[0]).strip("_").lower() in ("background", "bg")
        return [c for c in predicted if not (background and c == 0)] or predicted
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
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
    pic = viz.draw_boxes(viz.to_pil(image), target.boxes[0])
    draw = ImageDraw.Draw(pic)
    for box, label, score in zip(target.boxes[0].tolist(), target.labels[0].tolist(), scores.tolist()):
        draw.text((box[0] + 2, box[1] + 1), f"{_name(categories, label)} {score:.2f}", fill="#00ff00")
    return pic


def explain_task(
    model: nn.Module, paths: Sequence[str], task: str, methods: Sequence[str], out: Path, *,
    layer: Optional[str] = None, target: str = "top1", min_score: float = 0.5, device: str = "cpu",
) -> list[Path]:
    """Write the pictures and maps described in the module doc; returns the PNG paths written."""
    from .cli import _stem
    from .data.imageio import read_image

    if task not in ("detect", "segment"):
        raise InputError(f"task must be 'detect' or 'segment', got {task!r}")
    if task == "detect" and target != "top1":
        raise InputError("--target does not apply to --task detect: every detection scoring >= --min-score is explained")
    out.mkdir(parents=True, exist_ok=True)
    cats = getattr(model, "categories", None)
    written: list[Path] = []
    for path in paths:
        try:
            x = read_image(path)[None].to(device)
        except (OSError, ValueError, SyntaxError) as exc:
            raise CamkitError(f"cannot read image {path!r}: {exc}") from exc
        stem = _stem(path)
        with torch.no_grad():
            output = model(x)
        spec: Any
        if task == "detect":
            spec = Detection.from_output(output, min_score)
            scores = output[0]["scores"][output[0]["scores"] >= min_score]
            captions = [f"{_name(cats, int(lab))} {float(s):.2f} {[round(v) for v in box.tolist()]}"
                        for box, lab, s in zip(spec.boxes[0], spec.labels[0], scores)]
            written.append(out / f"{stem}_detections.png")
            _detections_picture(x[0], spec, scores, cats).save(written[-1])
            print(f"{path}: {len(captions)} detection(s) with score >= {min_score}: " + "; ".join(captions))
            slots = [f"det{k + 1}" for k in range(len(captions))]
        else:
            predicted = torch.unique(segmentation_logits(output)[0].argmax(0)).tolist()
            classes = segment_classes(target, cats, predicted)
            spec = Segmentation([classes])
            captions = [_name(cats, c) for c in classes]
            print(f"{path}: classes present: {', '.join(_name(cats, c) for c in predicted)}")
            slots = [_slug(c) for c in captions]
        for method in methods:
            cls = get(method)
            e = cls(model, layer=layer or "auto").explain(x, targets=spec)
            guided = cls.name.startswith("guided")
            maps = e.maps.reshape(len(slots), *e.maps.shape[-3 if guided else -2:])
            for k, (slot, caption) in enumerate(zip(slots, captions)):
                base = out / f"{stem}_{_slug(cls.name)}_{slot}"
                pic = viz.to_pil(to_image(maps[k])) if guided else viz.overlay(x[0], maps[k])
                if task == "detect":
                    pic = viz.draw_boxes(pic, spec.boxes[0][k:k + 1])
                pic.save(f"{base}.png")
                np.save(f"{base}.npy", maps[k].detach().cpu().numpy())
                written.append(Path(f"{base}.png"))
                print(f"  {cls.name} -> {base}.png ({caption}) + .npy")
    return written


def cmd_explain_task(args: argparse.Namespace) -> int:
    """The ``--task detect|segment`` branch of ``camkit explain``."""
    from .bench.sources import load_model

    spec = args.model if args.weights is None else f"{args.model}={args.weights}"
    model = load_model(spec, args.device)
    explain_task(model, args.images, args.task, [m.strip() for m in args.method.split(",") if m.strip()],
                 Path(args.output), layer=args.layer, target=args.target, min_score=args.min_score,
                 device=args.device)
    return 0
