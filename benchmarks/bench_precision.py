"""What ``precision="bf16"`` / ``"fp16"`` and ``channels_last=True`` buy, and what they change.

    python3 benchmarks/bench_precision.py [--device cpu|cuda] [--threads N] [--repeats 3]
                                          [--speed-methods gradcam,ablationcam,guided-backprop]
                                          [--digits 32] [--skip-speed] [--skip-agreement]

Speed: torchvision ResNet-50 (random init), 224x224, batch 1, layer4; per mode (fp32, bf16, fp32 +
channels-last, bf16 + channels-last; fp16 where the device supports it) the bare no-grad forward
and each method, median ms per image and the ratio to the float32 no-grad forward, the two timed in
turn (median over repeats), so a change in machine load hits both.

Agreement with float32, per mode and method: Pearson correlation of each map with the float32 map
of the same image and class (median and minimum over images), and the mean localisation IoU
(top-1 class, box at 0.15 x max) in float32 and its change. Data: the bundled digits models on
``--digits`` generated digits images with exact boxes, and EfficientNet-Lite0 (real ImageNet
weights) on the bundled photos.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch
import torchvision

import camkit
from _timing import device_label, median_ms  # benchmarks/ is on sys.path when run as a script
from camkit import metrics
from camkit.core.precision import check_available, model_forward
from camkit.data import batches, digits, samples
from camkit.errors import CamkitError

MAP_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "ablationcam", "scorecam", "eigencam"]
PHOTO_METHODS = ["gradcam", "gradcam++", "layercam", "ablationcam", "eigencam"]


def modes(device: str) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs that can run on ``device``, float32 first."""
    out = [("fp32", False)]
    for p in ("bf16", "fp16"):
        try:
            check_available(p, torch.device(device))
        except CamkitError as e:
            print(f"(not measured: {e})")
            continue
        out.append((p, False))
    return out + [(p, True) for p, _ in out]


def label(precision: str, cl: bool) -> str:
    return precision + (" + channels-last" if cl else "")


def speed(args: argparse.Namespace) -> None:
    dev = args.device
    model = torchvision.models.resnet50().eval().to(dev)
    x = torch.rand(1, 3, 224, 224, device=dev)

    def bare() -> object:
        with torch.no_grad():
            return model(x)

    print(f"\n### Speed: ResNet-50, 224x224, batch 1, layer4 ({device_label(dev)}, torch {torch.__version__})\n")
    print("| mode | method | ms / image | × fp32 no-grad forward |")
    print("|---|---|---|---|")
    for precision, cl in args.modes:
        def forward(precision: str = precision, cl: bool = cl) -> object:  # the forward alone, in this mode
            with torch.no_grad(), model_forward(model, precision, cl, x.device):
                return model(x)

        rows = [("no-grad forward", forward)]
        for name in args.speed_methods.split(","):
            cam = camkit.create(name, model, layer="layer4", precision=precision, channels_last=cl)
            rows.append((name, lambda cam=cam: cam(x)))
        for name, fn in rows:
            fn()
            runs = [(median_ms(bare, 1, warmup=False, device=dev), median_ms(fn, 1, warmup=False, device=dev))
                    for _ in range(args.repeats)]
            ms = statistics.median(t for _, t in runs)
            ratio = statistics.median(t / f for f, t in runs)
            print(f"| {label(precision, cl)} | {name} | {ms:.1f} | {ratio:.2f} |", flush=True)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), (a.norm(dim=1) == b.norm(dim=1)).double())


def agreement(args: argparse.Namespace) -> None:
    dev = args.device
    sets = [(name, camkit.models.load(name).to(dev), list(digits(args.digits, seed=1, split="test")), MAP_METHODS)
            for name in ("digits_resnet", "digits_vgg", "digits_vit")]
    sets.append(("efficientnet_lite0 (photos)", camkit.models.load("efficientnet_lite0").to(dev), samples(),
                 PHOTO_METHODS))
    print(f"\n### Agreement with float32 ({device_label(dev)}): map correlation and localisation IoU\n")
    print("| model | mode | method | corr median | corr min | IoU fp32 | ΔIoU |")
    print("|---|---|---|---|---|---|---|")
    for model_name, model, data, methods in sets:
        size = tuple(model.input_size)
        chunks = list(batches(data, size, batch_size=8))
        with torch.no_grad():  # every mode explains the float32 top-1 class
            classes = [model(x.to(dev)).argmax(1).tolist() for x, _ in chunks]
        for method in methods:
            maps = {}
            for precision, cl in args.modes:
                out = []
                cam = camkit.create(method, model, layer=model.default_layer, precision=precision, channels_last=cl)
                for (x, _), cls in zip(chunks, classes):
                    out.append(cam(x.to(dev), targets=cls).float().cpu())
                maps[(precision, cl)] = torch.cat(out)
            boxes = [s.boxes for _, chunk in chunks for s in chunk]
            iou = {k: metrics.localization_iou(m, boxes, 0.15).mean().item() for k, m in maps.items()}
            ref = maps[("fp32", False)]
            for (precision, cl), m in maps.items():
                if (precision, cl) == ("fp32", False):
                    continue
                r = _pearson(m, ref)
                print(f"| {model_name} | {label(precision, cl)} | {method} | {r.median():.4f} | {r.min():.4f} | "
                      f"{iou[('fp32', False)]:.3f} | {iou[(precision, cl)] - iou[('fp32', False)]:+.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed-methods", default="gradcam,ablationcam,guided-backprop")
    ap.add_argument("--digits", type=int, default=32, help="generated digits images for the agreement table")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {device_label(args.device)}")
    args.modes = modes(args.device)
    if not args.skip_speed:
        speed(args)
    if not args.skip_agreement:
        agreement(args)


if __name__ == "__main__":
    main()
