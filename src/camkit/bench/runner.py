"""Run one shard: a model on a range of images with every method, or that model's figures.

`run_shard` is a pure function of ``(shard, config)`` -- it reads the model and the images,
computes, and yields JSON-ready records; it writes nothing -- so any engine (this process, a pool, a
Ray worker) can call it, and a unit computed twice gives identical records. Models and datasets are
loaded once per process (`.sources`).

Per batch: one no-grad forward gives the predictions; each method then explains the predicted
class, the least predicted class and (for misclassified images) the true class in ONE call with a
``(B, K)`` target tensor, and the metrics run on those maps. Record types (field ``type``):
``image`` (prediction per image), ``map`` (one per model x method x image x target kind),
``skip`` (unreadable image), ``error`` (a method that cannot run on a model), ``figure`` and
``unit`` (the marker written after a unit's records: the unit is done).

Clips and volumes (the generated ``moving_digits`` / ``digit_volumes`` sets, ``(C, D, H, W)`` samples
with ``(N, 6)`` boxes) run through the same code with ``spatial_dims=3`` metrics: the pointing game
and energy read the union of the boxes (a clip's tube of per-frame boxes), the IoU compares the map's
3-D box with the box enclosing them (one object per item); pictures show the middle slice of the object.

Times (``time_map_s``) cover the map computation only, after each method has run once untimed on one
image of the model in this process (`_warm_up`), so no method is charged with the warm-up.
"""
from __future__ import annotations

import base64
import copy
import functools
import inspect
import time
import traceback
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .. import metrics
from ..core.outputs import to_logits
from ..errors import CamkitError
from ..methods import create, get
from .config import BASELINE_PREFIX, BenchConfig
from .plan import FIGURES, LEFT_OUT, PREDICTIONS, Shard, record_key
from .sources import Source, load_model, load_source

Record = dict[str, Any]
GALLERY_KINDS = ("top1", "true")
CONFIDENCE_KINDS = ("top1", "true")  # Average Drop / Increase are about the predicted or the true class
MISCLASSIFIED_REACH = 4  # misclassified images up to this many times gallery_images keep overlays
SANITY_SEED_OFFSET = 1000  # the randomised weights must not repeat a seed-0 random init of the model


@dataclass
class Batch:
    """Images of a shard that could be read, at the model's input size, with their predictions."""

    indices: list[int]
    samples: list[Any]
    x: torch.Tensor  # (B, 3, H, W) pixels in [0, 1] on the device; clips and volumes (B, C, D, H, W)
    logits: torch.Tensor  # (B, N)
    targets: torch.Tensor  # (B, K): top1, least[, true]
    kinds: tuple[str, ...]
    correct: list[bool]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _name(categories: Optional[list[str]], c: int) -> str:
    return categories[c] if categories is not None and 0 <= c < len(categories) else str(c)


def _read(source: Source, indices: range) -> tuple[list[tuple[int, Any]], list[Record]]:
    """The readable samples of ``indices`` and one ``skip`` record per unreadable image."""
    ok, skipped = [], []
    for i in indices:
        try:
            ok.append((i, source.load(i)))
        except OSError as exc:
            skipped.append({"type": "skip", "image": source.ids[i], "index": i, "reason": str(exc)})
    return ok, skipped


def _fitted(s: Any, size: tuple[int, ...], interpolation: str) -> Any:
    """An image resized to the model's ``(H, W)``; a clip or volume must already have the model's grid."""
    if s.image.dim() == 3:
        return s.resized(size[-2:], interpolation)
    if tuple(s.image.shape[1:]) != tuple(size):
        raise CamkitError(f"item {s.id!r} has the grid {tuple(s.image.shape[1:])} but the model takes {tuple(size)}; "
                          "generate the set at the model's size")
    return s


def _predict(model: nn.Module, items: list[tuple[int, Any]], device: torch.device) -> Batch:
    size = tuple(getattr(model, "input_size", items[0][1].image.shape[1:]))
    samples = [_fitted(s, size, getattr(model, "interpolation", "bilinear")) for _, s in items]
    x = torch.stack([s.image for s in samples]).to(device)
    with torch.no_grad():
        logits = to_logits(model(x)).float()
    n = logits.shape[1]
    top1, least = logits.argmax(1), logits.argmin(1)
    trues, correct = [], []
    for s, p in zip(samples, top1.tolist()):
        bad = [c for c in s.labels if not 0 <= c < n]
        if bad:
            raise CamkitError(f"image {s.id!r} has label(s) {bad} but the model has {n} classes: "
                              "do the data and the model use the same classes?")
        correct.append(p in s.labels)
        trues.append(p if p in s.labels else s.labels[0])
    true = torch.tensor(trues, device=logits.device)
    kinds: tuple[str, ...] = ("top1", "least") + (("true",) if not all(correct) else ())
    targets = torch.stack([top1, least, true][: len(kinds)], 1)
    return Batch([i for i, _ in items], samples, x, logits, targets, kinds, correct)


def _gallery(config: BenchConfig, index: int, correct: bool) -> bool:
    g = config.gallery_images
    return index < g or (not correct and index < MISCLASSIFIED_REACH * g)


def _image_records(model_spec: str, model: nn.Module, b: Batch, config: BenchConfig, seconds: float) -> list[Record]:
    from .. import viz

    cats = getattr(model, "categories", None)
    probs = b.logits.softmax(1)
    out = []
    for j, (i, s) in enumerate(zip(b.indices, b.samples)):
        top1, least = int(b.targets[j, 0]), int(b.targets[j, 1])
        true = top1 if b.correct[j] else s.labels[0]
        rec: Record = {
            "type": "image", "key": record_key(model_spec, "-", s.id, "image"), "model": model_spec,
            "image": s.id, "index": i, "labels": s.labels, "label_names": [_name(cats, c) for c in s.labels],
            "pred": top1, "pred_name": _name(cats, top1), "prob": float(probs[j, top1]),
            "least": least, "least_name": _name(cats, least), "true": true, "true_name": _name(cats, true),
            "correct": b.correct[j], "boxes": s.boxes.tolist(), "time_forward_s": seconds / len(b.indices),
        }
        if _gallery(config, i, b.correct[j]):
            image, boxes, _ = _view(s)
            picture = viz.draw_boxes(viz.to_pil(image), boxes)
            rec["artifacts"] = {"image.jpg": _b64(viz.encode(picture, "JPEG", max_side=160))}
        out.append(rec)
    return out


def _view(s: Any, m: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """What a picture of a sample shows: an image with its ``(N, 4)`` boxes (and map); a clip or volume's
    slice through the middle of its object (the middle of the boxes' z range), with the boxes there."""
    if s.image.dim() == 3:
        return s.image, s.boxes, m
    z0, z1 = (int(s.boxes[:, 2].min()), int(s.boxes[:, 5].max())) if len(s.boxes) else (0, s.image.shape[1])
    z = (z0 + z1 - 1) // 2
    here = s.boxes[(s.boxes[:, 2] <= z) & (z < s.boxes[:, 5])]
    return s.image[:, z], here[:, [0, 1, 3, 4]], None if m is None else m[z]


def _spatial(b: Batch) -> int:
    return b.x.dim() - 2


def _baseline(name: str, b: Batch, seed: int) -> torch.Tensor:
    """(B, *grid) baseline maps; the random one is seeded per image id (independent of batching)."""
    grid, d = tuple(b.x.shape[2:]), _spatial(b)
    if name != "random":
        return metrics.baseline_maps(name, (len(b.indices), *grid), device=b.x.device, spatial_dims=d)
    maps = []
    for s in b.samples:
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(s.id.encode()))
        maps.append(metrics.random_map(grid, generator=g, spatial_dims=d))
    return torch.stack(maps).to(b.x.device)


def _maps(model: nn.Module, method: str, b: Batch, config: BenchConfig,
          targets: Optional[torch.Tensor] = None, x: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[str]]:
    """(B, K, *grid) maps of ``targets`` (default ``b.targets``) on ``x`` (default ``b.x``) and the
    explained layer names."""
    targets = b.targets if targets is None else targets
    if method.startswith(BASELINE_PREFIX):
        m = _baseline(method[len(BASELINE_PREFIX):], b, config.protocol.seed)
        return m[:, None].expand(-1, targets.shape[1], *m.shape[1:]), []
    e = _method(model, method, config).explain(b.x if x is None else x, targets=targets)
    return e.maps.float(), list(e.layers)


def method_factory(method: str, config: BenchConfig) -> Callable[[nn.Module], Any]:
    """``model -> the method on it`` with the run's options and ``layer="auto"`` (the zoo model's
    default_layer; FullGrad: every biased conv / BatchNorm layer). The maps of the tables and the
    randomisation curve both come from it, so both explain the same layers."""
    p = config.protocol
    options = {"precision": p.precision, "channels_last": p.channels_last, **p.method_options.get(method, {})}
    return functools.partial(create, method, layer="auto", **options)


def _method(model: nn.Module, method: str, config: BenchConfig) -> Any:
    return method_factory(method, config)(model)


def method_seed(method: str, config: BenchConfig) -> Optional[int]:
    """The seed a stochastic method draws from in this run (RandomCAM, SS-CAM, Smooth Grad-CAM++ ...):
    its ``seed`` option, else its default; None for deterministic methods and the baseline maps."""
    if method.startswith(BASELINE_PREFIX):
        return None
    given = config.protocol.method_options.get(method, {})
    if "seed" in given:
        return given["seed"]
    for cls in get(method).__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None:
            param = inspect.signature(init).parameters.get("seed")
            if param is not None and param.default is not inspect.Parameter.empty:
                return param.default
    return None


@functools.lru_cache(maxsize=2)
def randomized_model(spec: str, device: str, seed: int) -> nn.Module:
    """A copy of the zoo model with every parameter re-initialised (cached per process)."""
    model = copy.deepcopy(load_model(spec, device))
    metrics.reinitialize_(model, seed)
    return model.eval()


def _sanity(shard: Shard, method: str, b: Batch, maps: torch.Tensor, config: BenchConfig) -> list[Optional[float]]:
    """Per image: Spearman correlation of the top-1 map with the same class's map on the randomised model."""
    if not config.protocol.sanity:
        return [None] * len(b.indices)
    rnd = randomized_model(shard.model, config.device, config.protocol.seed + SANITY_SEED_OFFSET)
    rand_maps, _ = _maps(rnd, method, b, config, targets=b.targets[:, :1])
    return metrics.spearman_correlation(maps[:, 0], rand_maps[:, 0], spatial_dims=_spatial(b)).tolist()


def metric_batch(x: torch.Tensor, pixels: int = 2 * 224 * 224) -> int:
    """Images per forward pass of the metrics: about ``pixels`` pixels (voxels for clips and volumes:
    2 images at 224 x 224, 24 at 64 x 64, 3 clips of 8 x 32 x 32). Measured on a 2-core CPU, larger batches
    were slower per image (EfficientNet-Lite0: 37 ms at 2, 63 ms at 8), as every activation then needs
    fresh memory."""
    return max(1, min(128, pixels // x[0, 0].numel()))


def _iou_boxes(boxes: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """The boxes the IoU compares with: an image's own; in 3-D the box enclosing an item's boxes
    (one object: a clip's per-frame boxes enclose its path)."""
    if spatial_dims == 2:
        return boxes
    return torch.cat([boxes[:, :3].amin(0), boxes[:, 3:].amax(0)])[None]


def _with_boxes(b: Batch) -> list[int]:
    return [j for j, s in enumerate(b.samples) if s.boxes.shape[0] > 0]


def _metrics(model: nn.Module, b: Batch, maps: torch.Tensor, config: BenchConfig) -> list[dict[str, list[Any]]]:
    """Per target kind: metric name -> per-image values (None where a metric does not apply).
    ROAD combined for the kinds of ``perturbation_kinds``."""
    p = config.protocol
    n = len(b.indices)
    has_box = _with_boxes(b)
    boxes = [b.samples[j].boxes for j in has_box]
    d = _spatial(b)
    enclosing = [_iou_boxes(bx, d) for bx in boxes]
    thresholds = [t / p.box_thresholds for t in range(p.box_thresholds)]
    batch = metric_batch(b.x)
    out = []
    for k, kind in enumerate(b.kinds):
        m, t = maps[:, k], b.targets[:, k]
        vals: dict[str, list[Any]] = {name: [None] * n for name in
                                      ("iou", "pointing", "energy", "box_ious", "deletion", "insertion")}
        if has_box:
            mb = m[has_box]
            loc = {
                "iou": metrics.localization_iou(mb, enclosing, p.threshold, spatial_dims=d),
                "pointing": metrics.pointing_game(mb, boxes, p.pointing_tolerance, spatial_dims=d),
                "energy": metrics.energy_pointing_game(mb, boxes, spatial_dims=d),
            }
            if kind == "top1":
                loc["box_ious"] = metrics.threshold_ious(mb, enclosing, thresholds, spatial_dims=d)
            for name, v in loc.items():
                for j, val in zip(has_box, v.tolist()):
                    vals[name][j] = val
        vals["y"] = vals["o"] = [None] * n
        if kind in CONFIDENCE_KINDS:
            cc = metrics.confidence_change(model, b.x, m, t, space=p.space, score=p.score, batch_size=batch)
            vals["y"], vals["o"] = cc.y.tolist(), cc.o.tolist()
        vals["road"] = [None] * n
        if kind in p.perturbation_kinds and p.road:
            vals["road"] = metrics.road(model, b.x, m, t, percentiles=p.road_percentiles, noise=p.road_noise,
                                        score=p.score, space=p.space, batch_size=batch, seed=p.seed).combined.tolist()
        if kind in p.perturbation_kinds:
            common = dict(steps=p.perturbation_steps, score=p.score, space=p.space, batch_size=batch, seed=p.seed)
            vals["deletion"] = metrics.deletion_auc(model, b.x, m, t, substrate=p.deletion_substrate, **common).auc.tolist()
            vals["insertion"] = metrics.insertion_auc(model, b.x, m, t, substrate=p.insertion_substrate, **common).auc.tolist()
        out.append(vals)
    return out


def _arcc(model: nn.Module, method: str, b: Batch, maps: torch.Tensor, road: list[Optional[float]],
          config: BenchConfig) -> dict[str, list[Any]]:
    """Per image of the top-1 maps ``maps`` (B, H, W): complexity, coherency (the method re-run on the
    image x its map) and ARCC from the run's ROAD combined (`camkit.metrics.arcc`)."""
    n = len(b.indices)
    if not (config.protocol.arcc and config.protocol.road) or any(r is None for r in road):
        return {"complexity": [None] * n, "coherency": [None] * n, "arcc": [None] * n}
    top1 = b.targets[:, :1]
    explain = lambda x, t: _maps(model, method, b, config, targets=top1, x=x)[0][:, 0]  # noqa: E731
    comp = metrics.complexity(maps, spatial_dims=_spatial(b))
    coh = metrics.coherency(explain, b.x, maps, top1[:, 0], space=config.protocol.space)
    r = (2 * torch.tensor(road, dtype=torch.float32)).clamp(0, 1)
    value = metrics.harmonic_arcc(coh, comp, r)
    return {"complexity": comp.tolist(), "coherency": coh.tolist(), "arcc": value.tolist()}


_WARMED: set[tuple[str, str, str]] = set()


def _warm_up(shard: Shard, method: str, model: nn.Module, b: Batch, config: BenchConfig) -> None:
    """Run ``method`` once, untimed, on one image the first time this process explains with it on this
    model: first calls pay for lazy initialisation (autograd, allocator, kernels), which is no part of
    the method's cost. A failure is left to the timed call, which records it."""
    key = (shard.model, config.device, method)
    if key in _WARMED:
        return
    _WARMED.add(key)
    one = Batch(b.indices[:1], b.samples[:1], b.x[:1], b.logits[:1], b.targets[:1], b.kinds, b.correct[:1])
    try:
        _maps(model, method, one, config)
    except Exception:
        pass


def _map_records(shard: Shard, method: str, model: nn.Module, b: Batch, config: BenchConfig) -> list[Record]:
    from .. import viz

    device = b.x.device
    _warm_up(shard, method, model, b, config)
    _sync(device)
    t0 = time.perf_counter()
    maps, layers = _maps(model, method, b, config)
    _sync(device)
    t1 = time.perf_counter()
    per_kind = _metrics(model, b, maps, config)
    per_kind[0].update(_arcc(model, method, b, maps[:, 0], per_kind[0]["road"], config))
    sanity = _sanity(shard, method, b, maps, config)
    t2 = time.perf_counter()
    n = len(b.indices)
    cats = getattr(model, "categories", None)
    proto = config.protocol.as_dict()
    seed = method_seed(method, config)
    out = []
    for j, (i, s) in enumerate(zip(b.indices, b.samples)):
        for k, kind in enumerate(b.kinds):
            if kind == "true" and b.correct[j]:
                continue  # the true class is the predicted one: its record is top1
            c = int(b.targets[j, k])
            vals = {name: v[j] for name, v in per_kind[k].items()}
            y, o = vals.pop("y"), vals.pop("o")
            rec: Record = {
                "type": "map", "key": record_key(shard.model, method, s.id, kind), "model": shard.model,
                "method": method, "layers": layers, "image": s.id, "index": i, "kind": kind,
                "class": c, "class_name": _name(cats, c), "labels": s.labels, "pred": int(b.targets[j, 0]),
                "correct": b.correct[j], **vals, "y": y, "o": o, "sanity": sanity[j] if kind == "top1" else None,
                "drop": max(0.0, y - o) / y * 100 if y is not None and y > 0 else None,
                "increase": None if y is None else o > y,
                "time_map_s": (t1 - t0) / n, "time_metrics_s": (t2 - t1) / n, "protocol": proto,
                "method_seed": seed, "road_seed": config.protocol.seed if config.protocol.road else None,
            }
            if kind in GALLERY_KINDS and _gallery(config, i, b.correct[j]):
                image, _, m = _view(s, maps[j, k])
                picture = viz.overlay(image, m)
                rec["artifacts"] = {"overlay.jpg": _b64(viz.encode(picture, "JPEG", max_side=160))}
            out.append(rec)
    return out


def _unit(shard: Shard, method: str, records: Sequence[Record] = ()) -> list[Record]:
    """A unit's records, each tagged with its unit key, then the unit marker with their count: a store
    that lost one of them (a corrupted line) sees the unit as not done (`ResultStore.incomplete`)."""
    key = shard.unit(method)
    return [*({**r, "unit": key} for r in records),
            {"type": "unit", "key": key, "model": shard.model, "method": method, "records": len(records)}]


def _error(shard: Shard, method: str, exc: Optional[BaseException]) -> Record:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc is not None and exc.__traceback__ else None
    where = f" ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})" if last else ""
    return {"type": "error", "key": f"{shard.unit(method)}|error", "model": shard.model, "method": method,
            "start": shard.start, "stop": shard.stop, "error": f"{type(exc).__name__}: {exc}{where}"}


def run_shard(shard: Shard, config: BenchConfig) -> Iterator[Record]:
    """Compute a shard's records (units already in ``shard.done`` are not recomputed), each unit's
    records followed by its ``unit`` marker."""
    if shard.kind == FIGURES:
        yield from _unit(shard, FIGURES, list(_figure_records(shard, config)))
        return
    device = torch.device(config.device)
    model = load_model(shard.model, config.device)
    source = load_source(config.data)
    items, skipped = _read(source, range(shard.start, shard.stop))
    pending = [m for m in shard.methods if shard.unit(m) not in shard.done]
    skips = [{**rec, "key": record_key(shard.model, "-", rec["image"], "skip"), "model": shard.model}
             for rec in skipped]
    if not items:
        if shard.unit(PREDICTIONS) not in shard.done:
            yield from _unit(shard, PREDICTIONS, skips)
        for method in pending:
            yield from _unit(shard, method)
        return
    _sync(device)
    t0 = time.perf_counter()
    b = _predict(model, items, device)
    _sync(device)
    if shard.unit(PREDICTIONS) not in shard.done:
        yield from _unit(shard, PREDICTIONS, skips + _image_records(shard.model, model, b, config, time.perf_counter() - t0))
    for method in pending:
        unmet = [] if method.startswith(BASELINE_PREFIX) else get(method).unmet_requirements(model)
        if unmet:  # left out with the reason, not run into an error
            left = {**_error(shard, method, None), "left_out": True,
                    "error": f"{LEFT_OUT}{method} needs {'; '.join(unmet)}, which {shard.model} does not have"}
            yield from _unit(shard, method, [left])
            continue
        try:
            records = _map_records(shard, method, model, b, config)
        except Exception as exc:  # a method that cannot run on this model is a result, not a crash
            records = [_error(shard, method, exc)]
        yield from _unit(shard, method, records)


def _first_readable(source: Source, config: BenchConfig, count: int) -> list[tuple[int, Any]]:
    stop = len(source) if config.limit is None else min(len(source), config.limit)
    found: list[tuple[int, Any]] = []
    for i in range(stop):
        if len(found) == count:
            break
        items, _ = _read(source, range(i, i + 1))
        found += items
    return found


def _figure_records(shard: Shard, config: BenchConfig) -> Iterator[Record]:
    from . import figures

    model = load_model(shard.model, config.device)
    source = load_source(config.data)
    items = _first_readable(source, config, shard.stop - shard.start)
    if items:
        b = _predict(model, items, torch.device(config.device))
        made = {
            "layers": lambda: figures.layer_figure(model, b.x, b.targets[:, 0], [s.id for s in b.samples],
                                                   config.layers_per_figure),
            "guided": lambda: figures.guided_figure(model, b.x, b.targets[:, 0], [s.id for s in b.samples]),
        }
        for name, make in made.items():
            try:
                fig = make()
            except Exception as exc:
                yield _error(shard, f"{FIGURES}:{name}", exc)
                continue
            if fig is None:
                continue
            png, caption = fig
            yield {"type": "figure", "key": f"{shard.model}|{FIGURES}|{name}", "model": shard.model,
                   "figure": name, "caption": caption, "artifacts": {f"{name}.png": _b64(png)}}
        yield _randomization_record(shard, model, b, config, config.curve_images or len(b.indices))


def _randomization_record(shard: Shard, model: nn.Module, b: Batch, config: BenchConfig, images: int) -> Record:
    """The cascading parameter-randomisation curve of every method (the figure is drawn by the report):
    per method, the mean over the first ``images`` images of the Spearman correlation after each step."""
    x, targets = b.x[:images], b.targets[:images, 0].tolist()
    layers = metrics.default_randomization_layers(model)
    curves: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    for method in shard.methods:
        if method.startswith(BASELINE_PREFIX):
            continue
        factory = method_factory(method, config)
        try:
            res = metrics.randomization_test(factory, model, x, targets,
                                             layers=layers, seed=config.protocol.seed + SANITY_SEED_OFFSET)
        except Exception as exc:  # a method that cannot run on this model has no curve
            failed[method] = f"{type(exc).__name__}: {exc}"
            continue
        curves[method] = res.spearman.mean(1).tolist()
    return {"type": "figure", "key": f"{shard.model}|{FIGURES}|randomization", "model": shard.model,
            "figure": "randomization", "layers": layers, "curves": curves, "failed": failed, "images": len(x)}
