"""ROAD combined: camkit's imputation (one sparse factorisation per removal mask, all channels and a
batch of masks at once) beside pytorch-grad-cam's ``ROADCombined`` on the same images and maps.

    python3 benchmarks/bench_road.py [--model resnet50] [--size 224] [--images 2]
                                     [--percentiles 20,40,60,80] [--repeats 1] [--threads N]

Random-init torchvision model, random images, Grad-CAM maps of the top-1 class; both sides explain the
softmax of that class with imputation noise 0 (so both compute the same numbers: their difference is
printed). Per image: the bare no-grad forward, camkit's ``metrics.road`` (imputation + 2P forwards),
its imputation alone, pgc's ``NoisyLinearImputer`` alone on the same images and masks, and pgc's
``ROADCombined`` (imputation + forwards), as milliseconds, multiples of a forward, and the ratios
pgc / camkit (the imputation's is the issue's target: >= 10x).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torchvision

import camkit
from camkit import metrics
from _timing import median_ms  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--percentiles", default="20,40,60,80")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    pcts = [float(p) for p in a.percentiles.split(",")]
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.model)(weights=None).eval()
    x = torch.rand(a.images, 3, a.size, a.size)
    maps = camkit.GradCAM(model, layer="layer4")(x).detach()
    top1 = model(x).argmax(1)
    n = a.images

    with torch.no_grad():
        fwd = median_ms(lambda: model(x[:1]), 3)
    ours = median_ms(lambda: metrics.road(model, x, maps, top1, percentiles=pcts, noise=0, batch_size=8),
                     a.repeats, warmup=False) / n
    k = [round(p / 100 * a.size * a.size) for p in pcts]
    ranks = maps.flatten(1).argsort(1, descending=True).argsort(1).view(n, a.size, a.size)
    removed = torch.cat([ranks < kk for kk in k] + [ranks >= a.size * a.size - kk for kk in k])
    reps = x.repeat(2 * len(pcts), 1, 1, 1)
    impute = median_ms(lambda: metrics.noisy_linear_imputation(reps, removed, 0.0), a.repeats, warmup=False) / n

    pgc_road.NoisyLinearImputer.__init__.__defaults__ = (0.0, pgc_road.neighbors_weights)
    imputer = pgc_road.NoisyLinearImputer()
    t = time.perf_counter()
    for img, rem in zip(reps, removed):  # pgc's imputation alone, on the same images and masks
        imputer(img, (~rem).float())
    impute_pgc = (time.perf_counter() - t) * 1000 / n
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in top1]
    t = time.perf_counter()
    ref = pgc_road.ROADCombined(percentiles=[100 - p for p in pcts])(x, maps.numpy(), targets, model)
    theirs = (time.perf_counter() - t) * 1000 / n
    mine = metrics.road(model, x, maps, top1, percentiles=pcts, noise=0).combined.numpy()

    print(f"{a.model} {a.size}x{a.size}, {n} images, percentiles {pcts}, threads {torch.get_num_threads()}")
    print(f"forward (batch 1)          {fwd:9.1f} ms")
    print(f"camkit ROAD combined       {ours:9.1f} ms/image  {ours / fwd:7.1f}x forward")
    print(f"  of which imputation      {impute:9.1f} ms/image")
    print(f"pgc imputation alone       {impute_pgc:9.1f} ms/image  (pgc / camkit: {impute_pgc / impute:.2f}x)")
    print(f"pytorch-grad-cam ROAD      {theirs:9.1f} ms/image  {theirs / fwd:7.1f}x forward")
    print(f"pgc / camkit               {theirs / ours:9.2f}x")
    print(f"max |camkit - pgc| combined  {float(np.abs(mine - ref).max()):.2e} (pixel counts may differ by one)")


if __name__ == "__main__":
    main()
