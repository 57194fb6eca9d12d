"""Ablation-CAM and Score-CAM speed as multiples of a bare no-grad forward measured in the same run.

    python3 benchmarks/bench_perturbation.py [--models resnet18,resnet50] [--repeats 3] [--peers resnet18] [--threads N]

ResNet at 224x224, one image, layer4 (random init). Reported per image, median wall time:

- Ablation-CAM against one no-grad forward of the image (target <= 3x on ResNet-50 layer4: the
  ablated channels only run the network after the layer).
- Score-CAM against its floor, ``C`` no-grad forwards at the best batch size (``C`` = channels with
  a non-constant map), timed right after it on random inputs (target <= 1.1x the floor).
- pytorch-grad-cam's AblationCAM / ScoreCAM (``pip install grad-cam``) beside them for the models in
  ``--peers``, timed once (they rerun the whole network per channel).

Ablation-CAM's ratio is the median of (Ablation-CAM / forward) over repeats timed in turn, so a
change in machine load hits both.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics

import torch
import torchvision

import camkit
from _timing import median_ms  # benchmarks/ is on sys.path when run as a script




def forward_ms_per_image(model: torch.nn.Module, batch: int, repeats: int) -> float:
    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        return median_ms(lambda: model(x), repeats) / batch


def chunked_forwards(model: torch.nn.Module, c: int, batch: int) -> None:
    """Score-CAM's floor: ``c`` no-grad forwards in batches of ``batch``."""
    x = torch.rand(batch, 3, 224, 224)
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, 224x224, batch 1, layer {args.layer}\n")
    print("| model | method | ms / image | × no-grad forward | floor (ms) | × floor | target |")
    print("|---|---|---|---|---|---|---|")
    peers = set(filter(None, args.peers.split(",")))
    for name in args.models.split(","):
        model = getattr(torchvision.models, name)().eval()
        x = torch.rand(1, 3, 224, 224)
        fwd = forward_ms_per_image(model, 1, max(5, args.repeats))

        def bare() -> object:
            with torch.no_grad():
                return model(x)

        def row(label: str, ms: float, floor: float | None = None, target: str = "") -> None:
            f = "" if floor is None else f"{floor:.0f}"
            r = "" if floor is None else f"{ms / floor:.2f}"
            print(f"| {name} | {label} | {ms:.0f} | {ms / fwd:.2f} | {f} | {r} | {target} |", flush=True)

        row("no-grad forward", fwd, fwd)

        abl = camkit.AblationCAM(model, layer=args.layer, batch_size=64)
        abl(x)  # warm-up
        pairs = [(median_ms(bare, 3, warmup=False), median_ms(lambda: abl(x), 1, warmup=False))
                 for _ in range(args.repeats)]  # interleaved, so a change in machine load hits both
        ratio = statistics.median(a / f for f, a in pairs)
        ms = statistics.median(a for _, a in pairs)
        row("camkit ablationcam (batch_size 64)", ms, ms / ratio, "≤ 3× forward")

        per_image = {b: forward_ms_per_image(model, b, 2) for b in map(int, args.score_batches.split(","))}
        best = min(per_image, key=per_image.__getitem__)
        c = informative_channels(model, args.layer, x)
        score = camkit.ScoreCAM(model, layer=args.layer, batch_size=best)
        ms = median_ms(lambda: score(x), args.score_repeats, warmup=False)
        floor = median_ms(lambda: chunked_forwards(model, c, best), args.score_repeats, warmup=False)
        row(f"camkit scorecam (C={c}, batch_size {best})", ms, floor, "≤ 1.1× floor")

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
                    ms = median_ms(lambda: cam(input_tensor=x, targets=None), 1, warmup=False)
                row(label + " (once)", ms)


if __name__ == "__main__":
    main()
