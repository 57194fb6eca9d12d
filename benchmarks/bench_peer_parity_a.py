"""Speed of the methods pytorch-grad-cam 1.5 added, as multiples of a bare no-grad forward, beside
pytorch-grad-cam's own implementations in the same run.

    python3 benchmarks/bench_peer_parity_a.py [--model resnet50] [--size 224] [--batch 1] [--repeats 5]
                                             [--threads N] [--device cuda] [--no-peers] [--only shapley,dff]

Median wall time per call; ratio = median over repeats of (method / no-grad forward of the same batch),
the two timed in turn so that a change in machine load hits both. Floors: Grad-CAM element-wise is a
gradient weighting (one forward + a backward through the layers after the target, <= 1.10x like
Grad-CAM); ShapleyCAM adds one Hessian-vector product through those layers (<= 1.5x); FEM, KPCA-CAM,
RandomCAM and DFF need no backward; Seg-Eigen-CAM is a gradient weighting plus one SVD per image.
"""
from __future__ import annotations

import argparse
import os
import statistics
import warnings
from typing import Callable

import torch
import torchvision

import camkit
from _timing import device_label, median_ms  # benchmarks/ is on sys.path when run as a script

LAYERS = {"resnet50": "layer4", "resnet18": "layer4", "vgg16": "features.29"}
# camkit name, its options, pytorch-grad-cam class name, pgc target ("logit" or "rest")
PAIRS = [
    ("gradcam", {}, "GradCAM", "logit"),
    ("gradcam-elementwise", {}, "GradCAMElementWise", "logit"),
    ("shapleycam", {}, "ShapleyCAM", "logit"),
    ("shapleycam", {"score": "rest"}, "ShapleyCAM", "rest"),
    ("segeigencam", {}, "SegEigenCAM", "logit"),
    ("fem", {}, "FEM", "logit"),
    ("kpcacam", {}, "KPCA_CAM", "logit"),
    ("randomcam", {}, "RandomCAM", "logit"),
]


def peer(model: torch.nn.Module, layer: str, cls_name: str, target: str) -> Callable[[torch.Tensor], object]:
    """pytorch-grad-cam's ``cls_name`` on ``layer``, explaining the top-1 class (its logit or its ReST score).

    Built inside each call and released after it (its README's ``with`` pattern): pgc's hooks would
    otherwise stay on the model and run during every other row's forwards."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    def run(x: torch.Tensor) -> object:
        with getattr(pgc, cls_name)(model, [model.get_submodule(layer)]) as cam:
            if target == "logit":
                return cam(input_tensor=x, targets=None)
            with torch.no_grad():
                top = model(x).argmax(1).tolist()
            return cam(input_tensor=x, targets=[ClassifierOutputReST(c) for c in top])

    return run


def peer_dff(model: torch.nn.Module, layer: str, k: int) -> Callable[[torch.Tensor], object]:
    """pytorch-grad-cam's ``DeepFeatureFactorization`` with its concepts labelled by ``model.fc``."""
    from pytorch_grad_cam import DeepFeatureFactorization

    def run(x: torch.Tensor) -> object:
        dff = DeepFeatureFactorization(model, model.get_submodule(layer), computation_on_concepts=model.fc)
        try:
            return dff(x, n_components=k)
        finally:
            dff.activations_and_grads.release()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", choices=sorted(LAYERS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--only", default="", help="comma-separated row labels to time (substring match), e.g. shapley")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")  # scikit-learn's convergence warnings inside pgc's DFF
    dev = args.device
    model = getattr(torchvision.models, args.model)().eval().to(dev)
    layer = LAYERS[args.model]
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {device_label(dev)}; "
          f"{args.model} {args.size}x{args.size}, batch {args.batch}, layer {layer}\n")

    def fwd() -> object:
        with torch.no_grad():
            return model(x)

    rows: list[tuple[str, Callable[[], object]]] = [("no-grad forward", fwd)]
    for name, opts, peer_name, target in PAIRS:
        suffix = f" ({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else ""
        cam = camkit.create(name, model, layer=layer, **opts)
        rows.append((f"camkit {name}{suffix}", lambda cam=cam: cam(x)))
        if not args.no_peers:
            try:
                f = peer(model, layer, peer_name, target)
                rows.append((f"pytorch-grad-cam {peer_name}{' (ReST)' if target == 'rest' else ''}", lambda f=f: f(x)))
            except Exception as e:  # noqa: BLE001 - optional peer
                print(f"(pytorch-grad-cam {peer_name} not timed: {e})")
    dff = camkit.DFF(model, layer=layer, k=5)
    rows.append(("camkit dff (k=5)", lambda: dff.explain(x)))
    if not args.no_peers and hasattr(model, "fc"):
        try:
            f = peer_dff(model, layer, 5)
            rows.append(("pytorch-grad-cam DeepFeatureFactorization (k=5)", lambda: f(x)))
        except Exception as e:  # noqa: BLE001
            print(f"(pytorch-grad-cam DFF not timed: {e})")
    if args.only:
        keep = [w.strip() for w in args.only.split(",")]
        rows = [r for i, r in enumerate(rows) if i == 0 or any(w in r[0] for w in keep)]

    print("| method | ms / call | × no-grad forward |")
    print("|---|---|---|")
    for label, fn in rows:
        pairs = [(median_ms(fwd, 1, warmup=False, device=dev), median_ms(fn, 1, warmup=j == 0, device=dev))
                 for j in range(args.repeats)]
        ms = statistics.median(t for _, t in pairs)
        ratio = statistics.median(t / f for f, t in pairs)
        print(f"| {label} | {ms:.0f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
