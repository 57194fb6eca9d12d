"""Every 3-D method on a clip, as multiples of a bare no-grad forward of torchvision's r3d_18 (random weights).

    python3 benchmarks/bench_video.py [--clip 16,112,112] [--repeats 3] [--methods gradcam,layercam] [--device cuda]
                                      [--layer layer4] [--all]

pytorch-grad-cam's and MONAI's Grad-CAM are timed beside camkit's when installed. Median wall time per
call; ratio = median over repeats of (method / a no-grad forward of the same clip timed just before it). By default the
expensive methods (one forward per channel or sample: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM's
replays) are left out; ``--all`` times them too (minutes on a CPU at 16x112^2).
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Callable

import torch

import camkit
from camkit.methods import get, list_methods
from _timing import device_label, median_ms  # benchmarks/ is on sys.path when run as a script

OPTIONS = {"dff": {"k": 3}}


def peers(model: torch.nn.Module, layer: str) -> dict[str, Callable[[torch.Tensor], object]]:
    out: dict[str, Callable[[torch.Tensor], object]] = {}
    try:
        from pytorch_grad_cam import GradCAM as PGC

        pgc = PGC(model=model, target_layers=[model.get_submodule(layer)])
        out["pytorch-grad-cam GradCAM"] = lambda x: pgc(input_tensor=x, targets=None)
    except Exception as e:  # noqa: BLE001 - optional peer
        print(f"(pytorch-grad-cam not timed: {e})")
    try:
        from monai.visualize import GradCAM as MGC

        mgc = MGC(nn_module=model, target_layers=layer)
        out["MONAI GradCAM"] = lambda x: mgc(x)
    except Exception as e:  # noqa: BLE001
        print(f"(MONAI not timed: {e})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="16,112,112", help="T,H,W of the clip (default 16,112,112)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every method defined on clips)")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--all", action="store_true", help="also the expensive methods")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    model = r3d_18(weights=None).eval().to(args.device)
    clip = tuple(int(v) for v in args.clip.split(","))
    x = torch.rand(1, 3, *clip, device=args.device)
    names = args.methods.split(",") if args.methods else [
        n for n in list_methods() if 3 in get(n).grid_dims and (args.all or not get(n).expensive)]
    print(f"r3d_18, clip 1x3x{'x'.join(map(str, clip))}, {device_label(args.device)}, "
          f"threads={torch.get_num_threads()}, cores={os.cpu_count()}, layer={args.layer}")

    def bare() -> object:
        with torch.no_grad():
            return model(x)

    def ratio(fn: Callable[[], object]) -> tuple[float, float]:
        """Median ms of ``fn`` and median over repeats of ``fn`` / a bare forward timed just before it
        (the two in turn, so a load that drifts during the run -- a shared machine -- cancels)."""
        fn()  # warm-up
        pairs = [(median_ms(bare, 1, warmup=False, device=args.device), median_ms(fn, 1, warmup=False, device=args.device))
                 for _ in range(args.repeats)]
        return statistics.median(m for _, m in pairs), statistics.median(m / f for f, m in pairs)

    fwd = median_ms(bare, args.repeats, device=args.device)
    print(f"{'no-grad forward':32s} {fwd:9.1f} ms   1.00x")
    rows: dict[str, Callable[[torch.Tensor], object]] = {}
    for n in names:
        layer = None if n == "guided-backprop" else ("auto" if n == "fullgrad" else args.layer)
        rows[f"camkit {n}"] = get(n)(model, layer=layer, **OPTIONS.get(n, {}))
    for label, fn in rows.items():
        ms, r = ratio(lambda: fn(x))
        print(f"{label:32s} {ms:9.1f} ms  {r:5.2f}x", flush=True)
    # peers last: pytorch-grad-cam's hooks stay on the model from its construction and would slow camkit's calls
    for label, fn in peers(model, args.layer).items():
        ms, r = ratio(lambda: fn(x))
        print(f"{label:32s} {ms:9.1f} ms  {r:5.2f}x", flush=True)

if __name__ == "__main__":
    main()
