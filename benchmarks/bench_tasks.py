"""Detection explanations as multiples of one plain no-grad detector forward, measured in the same run.

    python3 benchmarks/bench_tasks.py [--models fasterrcnn_mobilenet_v3_large_320_fpn,fasterrcnn_resnet50_fpn]
                                      [--size 320] [--repeats 5] [--threads N]

torchvision detectors, random init, one 3x320x320 image resized inside to 320 px (``min_size=320``),
``box_score_thresh=0`` so there are detections. Rows:

- Grad-CAM of one detection (``Detection([box], [label])``, the backbone's last feature map):
  one forward that records autograd from the layer on, plus one backward from the detection's
  score through post-processing, the RoI heads (all proposals: dense layers) and the FPN;
- Grad-CAM of five detections from the same forward (``Detection.each``, maps ``(1, 5, H, W)``):
  one forward, five backward passes (batched with vmap when autograd can);
- EigenCAM (no gradient: one forward and an SVD).

Ratio = median over repeats of (method / forward), the two timed in turn so that machine load hits
both alike.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torchvision.models import detection as tvd

import camkit
from _timing import median_ms  # benchmarks/ is on sys.path when run as a script
from camkit.targets import Detection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fasterrcnn_mobilenet_v3_large_320_fpn,fasterrcnn_resnet50_fpn")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, input 1x3x{args.size}x{args.size}\n")
    print("| model | method | ms | x forward |\n|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(tvd, name)(weights=None, weights_backbone=None, box_score_thresh=0.0, num_classes=91,
                                   min_size=args.size, max_size=args.size).eval()
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            d = model(x)[0]
        one = Detection([d["boxes"][:1]], [d["labels"][:1]])
        cases = {
            "Grad-CAM, 1 detection": lambda: camkit.GradCAM(model).explain(x, one),
            "Grad-CAM, 5 detections": lambda: camkit.GradCAM(model).explain(x, Detection.from_output([
                {k: v[:5] for k, v in d.items()}], min_score=0.0)),
            "EigenCAM": lambda: camkit.EigenCAM(model).explain(x, one),
        }

        def forward() -> None:
            with torch.no_grad():
                model(x)

        fwd = median_ms(forward, args.repeats)
        print(f"| {name} | no-grad forward | {fwd:.0f} | 1.00 |", flush=True)
        for label, fn in cases.items():
            pairs = [(median_ms(forward, 1, warmup=False), median_ms(fn, 1, warmup=i == 0)) for i in range(args.repeats)]
            ms = statistics.median(t for _, t in pairs)
            ratio = statistics.median(t / f for f, t in pairs)
            print(f"| {name} | {label} | {ms:.0f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
