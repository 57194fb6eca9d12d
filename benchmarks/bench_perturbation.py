"""Ablation-CAM and Score-CAM speed as multiples of a bare no-grad forward measured in the same run.

    python3 benchmarks/bench_perturbation.py [--models resnet18,resnet50] [--repeats 3] [--peers resnet18]
                                             [--threads N] [--device cpu|cuda] [--skip-scorecam]

ResNet at 224x224, one image, layer4 (random init). Reported per image, median wall time (on CUDA
each call is timed until the device has finished; the peak memory column is
``torch.cuda.max_memory_allocated`` during the call, above what was allocated before):

- Ablation-CAM with its closed form (the default: ResNet's head is affine in layer4, so every
  channel's ``y - y_k`` comes from one backward pass through the head; target <= 1.5x one no-grad
  forward) and with ``closed_form=False`` (the ablated channels replayed through the network after
  the layer in batches of 64), against one no-grad forward of the image.
- Score-CAM against its floor, ``C`` no-grad forwards at the best batch size (``C`` = channels with
  a non-constant map), timed right after it on random inputs (target <= 1.1x the floor).
- pytorch-grad-cam's AblationCAM / ScoreCAM (``pip install grad-cam``) beside them for the models in
  ``--peers``, timed once (they rerun the whole network per channel).

Ablation-CAM's ratios are medians of (method / forward) over repeats timed in turn, so a change in
machine load hits all three.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from typing import Callable, Optional

import torch
import torchvision

import camkit
from _timing import device_label, median_ms, sync  # benchmarks/ is on sys.path when run as a script


def forward_ms_per_image(model: torch.nn.Module, batch: int, repeats: int, device: str) -> float:
    x = torch.rand(batch, 3, 224, 224, device=device)
    with torch.no_grad():
        return median_ms(lambda: model(x), repeats, device=device) / batch


def chunked_forwards(model: torch.nn.Module, c: int, batch: int, device: str) -> None:
    """Score-CAM's floor: ``c`` no-grad forwards in batches of ``batch``."""
    x = torch.rand(batch, 3, 224, 224, device=device)
    with torch.no_grad():
        for start in range(0, c, batch):
            model(x[: min(batch, c - start)])


def informative_channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    """Channels of ``layer`` whose map is not constant (Score-CAM runs one masked input per such channel)."""
    store: dict[str, torch.Tensor] = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    with torch.no_grad():
        model(x)
    h.remove()
    flat = store["a"].flatten(2)
    return int((flat.amax(-1) != flat.amin(-1)).sum())


def peak_mib(fn: Callable[[], object], device: str) -> Optional[float]:
    """Peak CUDA memory of ``fn()`` above what was allocated before, MiB (None on the CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fn()
    sync(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the forward and Ablation-CAM timings")
    ap.add_argument("--score-repeats", type=int, default=1, help="Score-CAM runs C forwards: time it this often")
    ap.add_argument("--score-batches", default="16,32,64", help="batch sizes tried for Score-CAM's floor")
    ap.add_argument("--peers", default="resnet18", help="models on which to time pytorch-grad-cam once ('' for none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads (default: all cores; 1 gives steadier ratios on a shared machine)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--skip-scorecam", action="store_true", help="time Ablation-CAM only (Score-CAM runs C forwards)")
    args = ap.parse_args()
    dev = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {device_label(dev)}, {torch.get_num_threads()} CPU threads, 224x224, "
          f"batch 1, layer {args.layer}\n")
    print("| model | method | ms / image | × no-grad forward | floor (ms) | × floor | peak MiB | target |")
    print("|---|---|---|---|---|---|---|---|")
    peers = set(filter(None, args.peers.split(",")))
    for name in args.models.split(","):
        model = getattr(torchvision.models, name)().eval().to(dev)
        x = torch.rand(1, 3, 224, 224, device=dev)
        fwd = forward_ms_per_image(model, 1, max(5, args.repeats), dev)

        def bare() -> object:
            with torch.no_grad():
                return model(x)

        def row(label: str, ms: float, floor: float | None = None, target: str = "", fn=None) -> None:
            f = "" if floor is None else f"{floor:.1f}"
            r = "" if floor is None else f"{ms / floor:.2f}"
            mem = peak_mib(fn, dev) if fn is not None else None
            m = "" if mem is None else f"{mem:.0f}"
            print(f"| {name} | {label} | {ms:.1f} | {ms / fwd:.2f} | {f} | {r} | {m} | {target} |", flush=True)

        row("no-grad forward", fwd, fwd, fn=bare)

        closed = camkit.AblationCAM(model, layer=args.layer, batch_size=64)
        replay = camkit.AblationCAM(model, layer=args.layer, batch_size=64, closed_form=False)
        closed(x), replay(x)  # warm-up
        runs = [(median_ms(bare, 3, warmup=False, device=dev), median_ms(lambda: closed(x), 1, warmup=False, device=dev),
                 median_ms(lambda: replay(x), 1, warmup=False, device=dev)) for _ in range(args.repeats)]
        for j, label, target in ((1, "camkit ablationcam (closed form)", "≤ 1.5× forward"),
                                 (2, "camkit ablationcam (closed_form=False: replay)", "")):
            ratio = statistics.median(r[j] / r[0] for r in runs)
            ms = statistics.median(r[j] for r in runs)
            cam = closed if j == 1 else replay
            row(label, ms, ms / ratio, target, fn=lambda cam=cam: cam(x))

        if args.skip_scorecam:
            continue
        per_image = {b: forward_ms_per_image(model, b, 2, dev) for b in map(int, args.score_batches.split(","))}
        best = min(per_image, key=per_image.__getitem__)
        c = informative_channels(model, args.layer, x)
        score = camkit.ScoreCAM(model, layer=args.layer, batch_size=best)
        ms = median_ms(lambda: score(x), args.score_repeats, warmup=False, device=dev)
        floor = median_ms(lambda: chunked_forwards(model, c, best, dev), args.score_repeats, warmup=False, device=dev)
        row(f"camkit scorecam (C={c}, batch_size {best})", ms, floor, "≤ 1.1× floor", fn=lambda: score(x))

        if name in peers:
            try:
                from pytorch_grad_cam import AblationCAM as PAblation, ScoreCAM as PScore
            except ImportError as e:
                print(f"(pytorch-grad-cam not timed: {e})")
                continue
            module = model.get_submodule(args.layer)
            for label, cls in (("pytorch-grad-cam AblationCAM", PAblation), ("pytorch-grad-cam ScoreCAM", PScore)):
                cam = cls(model=model, target_layers=[module])
                with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # their progress bars
                    ms = median_ms(lambda: cam(input_tensor=x, targets=None), 1, warmup=False, device=dev)
                row(label + " (once)", ms)


if __name__ == "__main__":
    main()
