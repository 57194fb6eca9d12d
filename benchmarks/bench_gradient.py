"""Gradient CAM speed, as multiples of a bare no-grad forward measured in the same run.

    python3 benchmarks/bench_gradient.py [--models resnet50,vgg16] [--batches 1,8] [--repeats 5] [--device cuda]

Peers (pytorch-grad-cam, torchcam) are timed beside camkit when installed (`pip install camkit[peers]`).
Median wall time per call; ratio = median over repeats of (method / no-grad forward of the same
batch), the two timed in turn; on CUDA each call is timed until the device has finished.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Callable

import torch
import torchvision

import camkit
from _timing import device_label, median_ms  # benchmarks/ is on sys.path when run as a script

LAYERS = {"resnet50": "layer4", "vgg16": "features.29"}




def peers(model: torch.nn.Module, layer: str) -> dict[str, Callable[[torch.Tensor], object]]:
    out: dict[str, Callable[[torch.Tensor], object]] = {}
    module = model.get_submodule(layer)
    try:
        from pytorch_grad_cam import GradCAM as PGC

        pgc = PGC(model=model, target_layers=[module])
        out["pytorch-grad-cam GradCAM"] = lambda x: pgc(input_tensor=x, targets=None)
    except Exception as e:  # noqa: BLE001 - optional peer
        print(f"(pytorch-grad-cam not timed: {e})")
    try:
        from torchcam.methods import GradCAM as TCG

        def torchcam_gradcam(x: torch.Tensor) -> object:
            with TCG(model, target_layer=layer) as extractor:
                out_ = model(x)
                return extractor(out_.argmax(1).tolist(), out_)

        out["torchcam GradCAM"] = torchcam_gradcam
    except Exception as e:  # noqa: BLE001
        print(f"(torchcam not timed: {e})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,vgg16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--only", default="", help="comma-separated row labels to time (substring match), e.g. fullgrad")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    dev = args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {device_label(dev)}\n")
    print("| model | batch | method | ms / call | ms / image | × no-grad forward |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = getattr(torchvision.models, name)().eval().to(dev)
        layer = LAYERS[name]
        for b in map(int, args.batches.split(",")):
            x = torch.rand(b, 3, 224, 224, device=dev)
            rows: list[tuple[str, Callable[[], object]]] = []

            def fwd() -> object:
                with torch.no_grad():
                    return model(x)

            def full_backward() -> object:  # FullGrad's floor: autograd from the input, no parameter gradients
                xi = x.clone().requires_grad_(True)
                return torch.autograd.grad(model(xi).amax(1).sum(), xi)

            rows.append(("no-grad forward", fwd))
            rows.append(("forward + full backward (FullGrad's floor)", full_backward))
            for m in ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam"]:
                cam = camkit.create(m, model, layer=layer)
                rows.append((f"camkit {m}", lambda cam=cam: cam(x)))
            g = camkit.GradCAM(model, layer=layer)
            rows.append(("camkit gradcam TopK(5)", lambda: g(x, targets=camkit.TopK(5))))
            sg = camkit.SmoothGradCAMPlusPlus(model, layer=layer, n=8)
            rows.append(("camkit smoothgradcam++ (n=8)", lambda: sg(x)))
            fg = camkit.FullGrad(model)
            rows.append(("camkit fullgrad", lambda: fg(x)))
            ge = camkit.GradCAM(model, layer=layer, eigen_smooth=True)
            rows.append(("camkit gradcam eigen_smooth", lambda: ge(x)))
            ga = camkit.GradCAM(model, layer=layer, aug_smooth=True)
            rows.append(("camkit gradcam aug_smooth (6 views)", lambda: ga(x)))
            if not args.no_peers:
                rows += [(k, lambda f=f: f(x)) for k, f in peers(model, layer).items()]
            if args.only:
                keep = [w.strip() for w in args.only.split(",")]
                rows = [r for i, r in enumerate(rows) if i == 0 or any(w in r[0] for w in keep)]
            repeats = args.repeats if b == 1 else max(2, args.repeats // 2)
            for label, fn in rows:
                # forward and method timed in turn, so a change in machine load hits both
                pairs = [(median_ms(fwd, 1, warmup=False, device=dev), median_ms(fn, 1, warmup=i == 0, device=dev))
                         for i in range(repeats)]
                ms = statistics.median(t for _, t in pairs)
                ratio = statistics.median(t / f for f, t in pairs)
                print(f"| {name} | {b} | {label} | {ms:.0f} | {ms / b:.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
