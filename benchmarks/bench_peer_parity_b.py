"""SS-CAM, IS-CAM, SESS, FinerCAM, RefineCAM and LeGrad beside their peers' implementations, as multiples
of a bare no-grad forward measured in the same run.

    python3 benchmarks/bench_peer_parity_b.py [--size 112] [--samples 4] [--num-scales 12] [--repeats 3]
                                              [--threads N] [--device cpu|cuda] [--skip METHOD,...]

ResNet-18 (random init, ``layer4``) at ``size x size``, one image; LeGrad on a torchvision ViT-B/16 at the
same size (random init, head re-initialised: torchvision starts it at zero). Reported per image, median
wall time of ``--repeats`` calls (peers and the Score-CAM family: once; on CUDA each call is timed until
the device has finished):

- SS-CAM / IS-CAM (``--samples`` masked inputs per channel; torchcam's defaults 35 / 10) against their floor,
  ``C x samples`` no-grad forwards at the best batch size (``C`` = 512 channels; IS-CAM skips channels with
  a constant map, as Score-CAM), and torchcam's ``SSCAM`` / ``ISCAM`` with the same samples and batch size.
- SESS around Grad-CAM with pytorch-grad-cam's defaults (12 scales from the window = the image side, step =
  window), then with half-overlapping windows (step = window / 2): exact mode (every window through the
  network, the default) and fast mode (the network up to ``layer4`` once per rescaled image, the head per
  window), beside pytorch-grad-cam's ``SESS``; the correlation of the fast map with the exact one.
- FinerCAM (paper / torchcam defaults, and pytorch-grad-cam's alpha=1 weighting), RefineCAM on
  ``layer2, layer3, layer4`` (Grad-CAM++) and LeGrad, beside the peers' classes.

Results print row by row as they are measured.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Callable, Optional

import torch
import torchvision

import camkit
from camkit.methods.sess import window_starts
from _timing import device_label, median_ms  # benchmarks/ is on sys.path when run as a script
from bench_perturbation import informative_channels


def chunked_forwards(model: torch.nn.Module, n: int, batch: int, size: int, device: str) -> None:
    """The Score-CAM family's floor: ``n`` no-grad forwards in batches of ``batch``."""
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        for start in range(0, n, batch):
            model(x[: min(batch, n - start)])


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def quiet(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the peers' progress bars silenced."""
    def run() -> object:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            return fn()
    return run


class Table:
    """The markdown table, a row at a time; ratios to the model's no-grad forward ``fwd``."""

    def __init__(self, fwd: float, header: bool = True) -> None:
        self.fwd = fwd
        if not header:
            return
        print("| model | method | ms / image | × no-grad forward | floor (ms) | × floor | × peer's time | note |")
        print("|---|---|---|---|---|---|---|---|", flush=True)

    def row(self, model: str, label: str, ms: float, floor: Optional[float] = None, peer: Optional[float] = None,
            note: str = "") -> None:
        f = "" if floor is None else f"{floor:.0f}"
        r = "" if floor is None else f"{ms / floor:.2f}"
        p = "" if peer is None else f"{ms / peer:.3f}"
        print(f"| {model} | {label} | {ms:.0f} | {ms / self.fwd:.1f} | {f} | {r} | {p} | {note} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--samples", type=int, default=4, help="SS-CAM / IS-CAM samples per channel (torchcam: 35 / 10)")
    ap.add_argument("--num-scales", type=int, default=12, help="SESS scales (pytorch-grad-cam's default 12)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="masked inputs per pass (Score-CAM family, both libraries)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip", default="", help="comma-separated: sscam,iscam,sess,finercam,refinecam,legrad")
    args = ap.parse_args()
    dev, size, skip = args.device, args.size, set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {device_label(dev)}, {torch.get_num_threads()} threads, {size}x{size}, batch 1\n")
    model = torchvision.models.resnet18().eval().to(dev)
    x = torch.rand(1, 3, size, size, device=dev)

    def bare() -> object:
        with torch.no_grad():
            return model(x)

    fwd = median_ms(bare, max(5, args.repeats), device=dev)
    t = Table(fwd)
    t.row("resnet18", "no-grad forward", fwd, fwd)
    time = lambda fn, n=args.repeats: median_ms(fn, n, device=dev)  # noqa: E731  (after one warm-up call)

    from pytorch_grad_cam import FinerCAM as PgcFinerCAM, GradCAM as PgcGradCAM, GradCAMPlusPlus as PgcGradCAMPP
    from pytorch_grad_cam import RefineCAM as PgcRefineCAM, SESS as PgcSESS
    from torchcam import methods as tc

    c = 512
    for name, cls, peer_cls, per_channel in (("sscam", camkit.SSCAM, tc.SSCAM, c),
                                             ("iscam", camkit.ISCAM, tc.ISCAM, informative_channels(model, "layer4", x))):
        if name in skip:
            continue
        n = per_channel * args.samples
        ours = cls(model, "layer4", samples=args.samples, batch_size=args.batch)
        once = lambda fn: median_ms(fn, 1, warmup=False, device=dev)  # noqa: E731  (thousands of forwards each)
        ms = once(lambda: ours(x))
        floor = once(lambda: chunked_forwards(model, n, args.batch, size, dev))
        kw = {"num_samples": args.samples, "batch_size": args.batch, "input_shape": (3, size, size)}
        with peer_cls(model, "layer4", **kw) as extractor:
            peer = once(quiet(lambda: extractor([0], model(x))))
        t.row("resnet18", f"camkit {name} (samples {args.samples}, {n} masked forwards)", ms, floor, peer)
        t.row("resnet18", f"torchcam {peer_cls.__name__} (samples {args.samples})", peer, floor)

    for step in ([None, size // 2] if "sess" not in skip else []):  # pytorch-grad-cam's default, then half-overlapping
        opts = {"num_scales": args.num_scales, "step": step}
        fast = camkit.SESS(model, "layer4", mode="fast", **opts)
        exact = camkit.SESS(model, "layer4", mode="exact", **opts)
        pgc = PgcSESS(model, [model.layer4], base_method=PgcGradCAM, num_scales=args.num_scales, step_size=step)
        peer = median_ms(quiet(lambda: pgc(x)), 1, device=dev)
        agree = corr(fast(x), exact(x))
        ms_fast, ms_exact = time(lambda: fast(x)), time(lambda: exact(x))
        windows = sum(len(window_starts(s, step or size, size)) ** 2 for s in exact.sizes(size))
        what = f"{args.num_scales} scales, step {step or size}: {windows} windows"
        t.row("resnet18", f"camkit sess exact ({what})", ms_exact, peer=peer, note="the default mode")
        t.row("resnet18", f"camkit sess fast ({what})", ms_fast, peer=peer, note=f"r = {agree:.3f} with exact")
        t.row("resnet18", f"pytorch-grad-cam SESS (GradCAM; {what})", peer)

    if "finercam" not in skip:
        ours = camkit.FinerCAM(model, "layer4")
        pgc_style = camkit.FinerCAM(model, "layer4", alpha=1.0, weighting="probability")
        pgc = PgcFinerCAM(model, [model.layer4])
        peer_pgc = time(quiet(lambda: pgc(x)))
        with tc.FinerCAM(model, "layer4", input_shape=(3, size, size)) as extractor:
            peer_tc = time(lambda: extractor([0], model(x)))
        t.row("resnet18", "camkit finercam (gradcam)", time(lambda: ours(x)), peer=peer_tc, note="× torchcam's")
        t.row("resnet18", "camkit finercam (alpha 1, probability)", time(lambda: pgc_style(x)), peer=peer_pgc,
              note="× pytorch-grad-cam's")
        t.row("resnet18", "pytorch-grad-cam FinerCAM", peer_pgc)
        t.row("resnet18", "torchcam FinerCAM", peer_tc)

    if "refinecam" not in skip:
        layers = ["layer2", "layer3", "layer4"]
        ours = camkit.RefineCAM(model, layers)
        pgc = PgcRefineCAM(model, [model.get_submodule(n) for n in layers], base_method=PgcGradCAMPP)
        peer_pgc = time(quiet(lambda: pgc(x)))
        with tc.RefineCAM(model, layers, input_shape=(3, size, size)) as extractor:
            peer_tc = time(lambda: extractor([0], model(x)))
        t.row("resnet18", "camkit refinecam (gradcam++, 3 layers)", time(lambda: ours(x)), peer=peer_pgc,
              note="× pytorch-grad-cam's")
        t.row("resnet18", "pytorch-grad-cam RefineCAM", peer_pgc)
        t.row("resnet18", "torchcam RefineCAM", peer_tc)

    if "legrad" not in skip:
        vit = torchvision.models.vit_b_16(image_size=size).eval().to(dev)
        torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
        xv = torch.rand(1, 3, size, size, device=dev)

        def vit_bare() -> object:
            with torch.no_grad():
                return vit(xv)

        vfwd = median_ms(vit_bare, max(5, args.repeats), device=dev)
        tv = Table(vfwd, header=False)
        tv.row("vit_b_16", "no-grad forward", vfwd, vfwd)
        ours = camkit.LeGrad(vit)
        with tc.LeGrad(vit, list(vit.encoder.layers)) as extractor:
            peer = time(lambda: extractor([0], vit(xv)))
        tv.row("vit_b_16", "camkit legrad (12 blocks)", time(lambda: ours(xv)), peer=peer, note="× torchcam's")
        tv.row("vit_b_16", "torchcam LeGrad (12 blocks)", peer)


if __name__ == "__main__":
    main()
