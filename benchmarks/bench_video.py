"""Every 3-D method on a clip, as multiples of a bare no-grad forward of torchvision's r3d_18 (random weights).

    python3 benchmarks/bench_video.py [--clip 16,112,112] [--repeats 3] [--methods gradcam,layercam] [--device cuda]
                                      [--layer layer4] [--all]

pytorch-grad-cam's and MONAI's Grad-CAM are timed beside camkit's when installed. Median wall time per
call; ratio = method / no-grad forward of the same clip, both timed in this run. By default the
expensive methods (one forward per channel or sample: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM's
replays) are left out; ``--all`` times them too (minutes on a CPU at 16x112^2).
"""
from __future__ import annotations

import argparse
import os
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

    fwd = median_ms(bare, args.repeats, device=args.device)
    print(f"{'no-grad forward':32s} {fwd:9.1f} ms   1.00x")
    rows: dict[str, Callable[[torch.Tensor], object]] = {}
    for n in names:
        layer = None if get(n).output == "attribution" and n == "guided-backprop" else args.layer
        method = get(n)(model, layer=layer if n not in ("fullgrad",) else "auto", **OPTIONS.get(n, {}))
        rows[f"camkit {n}"] = method
    for label, fn in rows.items():
        ms = median_ms(lambda: fn(x), args.repeats, device=args.device)
        print(f"{label:32s} {ms:9.1f} ms  {ms / fwd:5.2f}x", flush=True)
    # peers last: pytorch-grad-cam's hooks stay on the model from its construction and would slow camkit's calls
    for label, fn in peers(model, args.layer).items():
        ms = median_ms(lambda: fn(x), args.repeats, device=args.device)
        print(f"{label:32s} {ms:9.1f} ms  {ms / fwd:5.2f}x", flush=True)
    fwd2 = median_ms(bare, args.repeats, device=args.device)
    print(f"{'no-grad forward (again, at the end)':32s} {fwd2:9.1f} ms  {fwd2 / fwd:5.2f}x")


if __name__ == "__main__":
    main()
