"""The ``camkit`` command: thin argument parsing over the library.

    camkit explain IMAGE... --model NAME [--method gradcam[,layercam]] [-o DIR]
    camkit bench --models A,B --methods all --data digits --limit 100 -o DIR
    camkit demo [-o DIR]
    camkit report DIR
    camkit list
    camkit train-digits [names...]
    camkit serve --models efficientnet_lite0,digits_resnet [--port 8000]

Exit status: 0 on success, 1 on an error (a one-line message, no traceback unless ``--debug``),
130 when interrupted (a bench can be resumed by running the same command again).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

DEFAULT_OUT = "camkit-report"
DEFAULT_EXPLAIN_OUT = "camkit-explain"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _threads(spec: Optional[str]) -> None:
    """``--threads``: a number, or ``auto`` -- torch's default, unless the CPUs are already busy (load
    average >= cores - 0.5), then 1: several threads on busy cores wait for each other at every
    operation (measured here: 2 threads 2-5x slower than 1 under a load of 5 on 2 cores)."""
    if spec is None:
        return
    import torch

    if spec == "auto":
        cores = os.cpu_count() or 1
        busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores - 0.5
        if busy and cores > 1:
            torch.set_num_threads(1)
        return
    try:
        n = int(spec)
    except ValueError:
        raise SystemExit(f"camkit: error: --threads must be a number or 'auto', got {spec!r}") from None
    if n < 1:
        raise SystemExit(f"camkit: error: --threads must be >= 1, got {n}")
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ explain


def _target(spec: str, categories: Optional[list[str]]) -> Any:
    """``top1`` -> None, ``topK`` -> TopK(K), an int or a class name -> its index."""
    import camkit

    s = spec.strip()
    m = re.fullmatch(r"top(\d+)", s.lower())
    if m:
        k = int(m.group(1))
        return None if k == 1 else camkit.TopK(k)
    if s.lstrip("-").isdigit():
        return int(s)
    if categories:
        exact = [i for i, c in enumerate(categories) if c.lower() == s.lower()]
        partial = [i for i, c in enumerate(categories) if s.lower() in [p.strip().lower() for p in c.split(",")]]
        hits = exact or partial
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise camkit.CamkitError(f"class name {s!r} is ambiguous: {[categories[i] for i in hits[:5]]}")
    raise camkit.CamkitError(f"--target must be top1, topK (e.g. top5), a class index or a class name; got {s!r}")


def _stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("._") or "image"


def _warn(command: str, text: str) -> None:
    print(f"camkit {command}: warning: {text}", file=sys.stderr)


def _picture_size(spec: str, original: tuple[int, int], model_size: tuple[int, int]) -> tuple[int, int]:
    """``--size``: ``original`` (the image's own), ``model`` (the input the map was computed on), or N
    (the original's aspect, longer side N pixels)."""
    import camkit

    if spec == "original":
        return original
    if spec == "model":
        return model_size
    if not spec.isdigit() or int(spec) < 1:
        raise camkit.CamkitError(f"--size must be original, model or a number of pixels, got {spec!r}")
    scale = int(spec) / max(original)
    return max(1, round(original[0] * scale)), max(1, round(original[1] * scale))


def cmd_explain(args: argparse.Namespace) -> int:
    if args.task != "classify":  # detectors and segmenters: camkit.explain_tasks
        from camkit.explain_tasks import cmd_explain_task

        return cmd_explain_task(args)
    import numpy as np
    import torch

    import camkit
    from camkit import viz
    from camkit.bench.sources import load_model, random_weights, random_weights_warning
    from camkit.core.outputs import to_logits
    from camkit.data import resize_image
    from camkit.data.geometry import Frame, fit
    from camkit.data.imageio import read_image
    from camkit.methods import get, to_image

    spec = args.model if args.weights is None else f"{args.model}={args.weights}"
    model = load_model(spec, args.device)
    if random_weights(spec):
        _warn("explain", random_weights_warning(spec))
    size = tuple(model.input_size)
    images, pictures = [], []  # model inputs; (frame, image) of each written picture
    for path in args.images:
        try:
            original = read_image(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise camkit.CamkitError(f"cannot read image {path!r}: {exc}") from exc
        xi, frame = fit(original, size, args.fit, interpolation=getattr(model, "interpolation", "bilinear"))
        images.append(xi)
        out_size = _picture_size(args.size, frame.original, size)
        if args.size == "model":
            pictures.append((None, xi))
        else:  # the map goes back through the preprocessing geometry, onto the image at out_size
            pictures.append((Frame.fit(out_size, size, args.fit), resize_image(original, out_size)))
    x = torch.stack(images).to(args.device)
    cats = getattr(model, "categories", None)
    targets = _target(args.target, cats)
    precision = _precision(args)
    layer = args.layer or "auto"  # "auto": the zoo model's default_layer (FullGrad: all its biased layers)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = lambda c: cats[c] if cats and 0 <= c < len(cats) else str(c)  # noqa: E731
    with torch.no_grad():
        probs = to_logits(model(x)).float().softmax(1)
    for path, p in zip(args.images, probs):
        top = p.topk(min(5, p.numel()))
        preds = ", ".join(f"{name(int(i))} ({float(v):.3f})" for v, i in zip(top.values, top.indices))
        print(f"{path}: {preds}")
    for method in _csv(args.method):
        cls = get(method)
        e = cls(model, layer=layer, precision=precision, channels_last=args.channels_last).explain(x, targets=targets)
        guided = cls.name.startswith("guided")
        maps = e.maps if (e.maps.dim() == (5 if guided else 4)) else e.maps.unsqueeze(1)
        classes = e.targets.reshape(x.shape[0], -1) if e.targets is not None else None
        for i, path in enumerate(args.images):
            for k in range(maps.shape[1]):
                c = int(classes[i, k]) if classes is not None else None
                suffix = "" if maps.shape[1] == 1 else f"_k{k + 1}"
                base = out / f"{_stem(path)}_{re.sub(r'[^A-Za-z0-9+_-]', '', cls.name)}{suffix}"
                frame, image = pictures[i]
                m = maps[i, k].detach().cpu() if frame is None else frame.to_original(maps[i, k].detach().cpu())
                picture = viz.to_pil(to_image(m)) if guided else viz.overlay(image, m)
                picture.save(f"{base}.png")
                np.save(f"{base}.npy", m.numpy())
                print(f"  {cls.name} -> {base}.png ({name(c) if c is not None else 'callable'}) + .npy")
    print(f"camkit explain: maps written to {out.resolve()}")
    return 0


# -------------------------------------------------------------------------------------------- bench


def _protocol(args: argparse.Namespace) -> Any:
    from camkit.bench import Protocol

    kw: dict[str, Any] = {}
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.steps is not None:
        kw["perturbation_steps"] = args.steps
    if args.no_baselines:
        kw["baselines"] = ()
    if args.scorecam_batch is not None:
        kw["method_options"] = {"scorecam": {"batch_size": args.scorecam_batch}}
    return Protocol(precision=_precision(args), channels_last=args.channels_last, **kw)


def _precision(args: argparse.Namespace) -> str:
    """``--precision``, checked against ``--device`` before anything runs."""
    import torch

    from camkit.core.precision import check_available, parse_precision

    precision = parse_precision(args.precision)
    check_available(precision, torch.device(args.device))
    return precision


def cmd_bench(args: argparse.Namespace) -> int:
    from camkit.bench import BenchConfig, resolve_methods, run_bench, summary_text
    from camkit.bench.sources import random_weights, random_weights_warning

    config = BenchConfig(
        models=tuple(_csv(args.models)), methods=resolve_methods(args.methods), data=args.data, limit=args.limit,
        batch_size=args.batch_size, device=args.device, protocol=_protocol(args), gallery_images=args.gallery,
    )
    from camkit.errors import CamkitError

    engine_options: dict[str, Any] = {}
    if args.engine == "ray":
        engine_options = {"address": args.address, "num_workers": args.num_workers,
                          "gpus_per_worker": args.gpus_per_worker}
    elif (args.address, args.num_workers, args.gpus_per_worker) != (None, None, 0.0):
        raise CamkitError("--address, --num-workers and --gpus-per-worker need --engine ray")
    for spec in config.models:
        if random_weights(spec):
            _warn("bench", random_weights_warning(spec))
    result = run_bench(config, args.output, resume=args.resume, engine=args.engine, progress=not args.quiet,
                       engine_options=engine_options)
    print(summary_text(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from camkit.bench.demo import run_demo

    from camkit.bench import summary_text

    demo = run_demo(args.output, progress=not args.quiet, resume=args.resume)
    for result in demo.results:
        print(summary_text(result))
    print(f"camkit demo: report at {demo.index} (tables: {demo.index.parent / 'table.md'})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from camkit.bench import write_report

    write_report(args.directory)
    print(f"camkit report: {Path(args.directory) / 'report.html'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import camkit
    from camkit.bench import DATASETS, list_engines

    print("methods:  " + ", ".join(camkit.list_methods()))
    print("models:   " + ", ".join(camkit.models.list_models()))
    for _module, _function, usage in camkit.models.PREFIXES.values():
        name, text = usage.split("  ", 1)
        print(f"  {name:<17} {text}")
    print("datasets:")
    for name, text in DATASETS.items():
        print(f"  {name:<17} {text}")
    print("engines:  " + ", ".join(list_engines()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from camkit.serve import run
        import fastapi, fastapi_offline, uvicorn  # noqa: F401,E401
    except ImportError as exc:
        raise SystemExit(f"camkit serve needs the serve extra: pip install 'camkit[serve]' ({exc})") from None
    run(_csv(args.models), host=args.host, port=args.port, device=args.device, max_batch=args.max_batch,
        window_ms=args.batch_window_ms, max_queue=args.max_queue, workers=args.workers, timeout=args.timeout,
        max_image_mb=args.max_image_mb, max_megapixels=args.max_megapixels)
    return 0


def cmd_train_digits(args: argparse.Namespace) -> int:
    from camkit.models.train_digits import main as train_main

    train_main(args.rest)
    return 0


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from camkit import __version__
    from camkit.bench.engines import list_engines

    p = argparse.ArgumentParser(prog="camkit", description="Class Activation Maps for PyTorch vision models, "
                                "and the metrics that say which to trust.")
    p.add_argument("--version", action="version", version=f"camkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def forward_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the methods' model forward under autocast in this precision; maps stay float32 "
                        "(default: fp32; fp16 needs a GPU or a CPU with AMX-FP16)")
        sp.add_argument("--channels-last", action="store_true",
                        help="run the methods' model forward in channels-last memory format")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
        sp.add_argument("--threads", default="auto", help="torch CPU threads: a number, or auto (default): "
                        "torch's choice, 1 when the CPUs are already busy")

    e = sub.add_parser("explain", help="maps of one or more images", description="Explain images with one or "
                       "more methods: writes overlays (PNG) and raw maps (.npy), prints the predicted classes.")
    e.add_argument("images", nargs="+", metavar="IMAGE")
    e.add_argument("--model", required=True, help="zoo model name, timm:NAME, hf:DIR or torchvision:NAME (camkit list)")
    e.add_argument("--weights", default=None, help="state-dict path, a named weights set, or 'random'")
    e.add_argument("--method", default="gradcam", help="method name(s), comma-separated (default: gradcam)")
    e.add_argument("--layer", default=None, help="layer name (default: the model's default layer)")
    e.add_argument("--target", default="top1", help="top1, topK (e.g. top3), a class index or a class name; "
                   "--task segment: classes (comma-separated; default: every predicted class)")
    e.add_argument("--task", default="classify", choices=("classify", "detect", "segment"),
                   help="detect: one map per detection (torchvision detectors); segment: one map per class")
    e.add_argument("--min-score", type=float, default=0.5, help="--task detect: explain detections scoring at least this")
    e.add_argument("-o", "--output", default=DEFAULT_EXPLAIN_OUT, help=f"output directory (default: {DEFAULT_EXPLAIN_OUT})")
    e.add_argument("--size", default="original", help="size of the written overlays and .npy maps: original "
                   "(each image's own, default), model (the model's input) or N (longer side N pixels)")
    e.add_argument("--fit", default="stretch", choices=("stretch", "letterbox", "crop"),
                   help="how an image becomes the model's input: stretch (resize, default), letterbox (resize "
                   "keeping the aspect ratio, pad) or crop (resize to cover, centre crop); maps go back the same way")
    forward_options(e)
    common(e)
    e.set_defaults(func=cmd_explain)

    b = sub.add_parser("bench", help="methods x models x data -> tables, figures, HTML report",
                       description="Run the benchmark; rerun the same command to resume an interrupted run.")
    b.add_argument("--models", required=True, help="comma-separated zoo names (or timm:NAME, hf:DIR, torchvision:NAME), "
                   "each optionally NAME=WEIGHTS")
    b.add_argument("--methods", default="all", help="'all' or comma-separated method names (default: all)")
    b.add_argument("--data", default="digits", help="samples | digits[:N] | imagenet:PATH | folder:PATH")
    b.add_argument("--limit", type=int, default=None, help="use the first N images")
    b.add_argument("--batch-size", type=int, default=8, help="images per shard and batch (default: 8)")
    b.add_argument("-o", "--output", default=DEFAULT_OUT, help=f"run directory (default: {DEFAULT_OUT})")
    b.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a run in OUTPUT (default); --no-resume refuses a directory with results")
    b.add_argument("--engine", default="local", choices=list_engines(), help="where shards run (default: local)")
    b.add_argument("--address", default=None,
                   help="with --engine ray: 'auto' (this machine's cluster), HOST:PORT (a head), ray://HOST:PORT, "
                   "or none for a fresh local Ray")
    b.add_argument("--num-workers", type=int, default=None, help="with --engine ray: shards in flight (default: cluster CPUs)")
    b.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per task (use with --device cuda)")
    b.add_argument("--threshold", type=float, default=None, help="box threshold, fraction of the map max (0.15)")
    b.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (32)")
    b.add_argument("--scorecam-batch", type=int, default=None, help="Score-CAM masked inputs per pass")
    b.add_argument("--no-baselines", action="store_true", help="leave out the uniform/Gaussian/random baselines")
    b.add_argument("--gallery", type=int, default=12, help="images whose overlays go to the galleries (12)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    forward_options(b)
    common(b)
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the whole benchmark on bundled photos and digits, offline",
                       description="EfficientNet-Lite0 on the bundled real photos and the three digits models on "
                       "a generated digits split, every method; a few minutes on a laptop CPU.")
    d.add_argument("-o", "--output", default="camkit-demo", help="output directory (default: camkit-demo)")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="continue an earlier demo")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="rewrite the tables and report of a run directory from its results")
    r.add_argument("directory")
    r.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="methods, models, datasets and engines")
    ls.set_defaults(func=cmd_list)

    sv = sub.add_parser("serve", help="a local web page and JSON API that explain uploaded images",
                        description="Serve the models: a page at / (upload an image, pick methods, see the maps), "
                        "a JSON API (GET /models, GET /methods, POST /explain) and its docs at /docs. Needs the "
                        "serve extra: pip install 'camkit[serve]'.")
    sv.add_argument("--models", default="efficientnet_lite0,digits_resnet", help="comma-separated zoo names, each "
                    "optionally NAME=WEIGHTS (default: efficientnet_lite0,digits_resnet)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    sv.add_argument("--max-batch", type=int, default=16, help="images per batched forward (default: 16; 1: no "
                    "dynamic batching)")
    sv.add_argument("--batch-window-ms", type=float, default=5.0, help="how long the first request of a batch "
                    "waits for others (default: 5)")
    sv.add_argument("--max-queue", type=int, default=64, help="pending jobs (one per method of a request) before "
                    "answering 503 (default: 64)")
    sv.add_argument("--workers", type=int, default=1, help="threads running batches (default: 1)")
    sv.add_argument("--timeout", type=float, default=120.0, help="seconds per request before 504 (default: 120)")
    sv.add_argument("--max-image-mb", type=float, default=20.0, help="largest upload in MB (default: 20)")
    sv.add_argument("--max-megapixels", type=float, default=16.0, help="largest image in megapixels (default: 16)")
    common(sv)
    sv.set_defaults(func=cmd_serve)

    t = sub.add_parser("train-digits", help="train the bundled digits models (see its --help)", add_help=False)
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_train_digits)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``camkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(getattr(args, "threads", None))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ncamkit: interrupted; rerun the same command to resume a bench", file=sys.stderr)
        return 130
    except Exception as exc:  # one readable line; --debug for the traceback
        if args.debug or os.environ.get("CAMKIT_DEBUG"):
            raise
        from camkit import CamkitError

        kind = "" if isinstance(exc, CamkitError) else f"{type(exc).__name__}: "
        print(f"camkit {args.command}: error: {kind}{exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
