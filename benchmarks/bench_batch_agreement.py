"""How far a map computed in a batch is from the same image's map computed alone.

    python3 benchmarks/bench_batch_agreement.py [--model efficientnet_lite0] [--threads 2]
                                                [--methods guided-backprop,guided-gradcam,gradcam]

Images: the bundled photos at the model's input size (``--digits N`` generated digits images for the
digits models). Per method and target (top-1; TopK(3)): the largest ``|batched - alone|`` over all
pixels, the largest ``|alone|`` (CAM maps are in [0, 1]; the guided methods' attributions are not
normalised) and their ratio per image (the bound README states: 1e-4 of the image's largest value).
"""
from __future__ import annotations

import argparse
import time

import torch

import camkit
from camkit.data.sample import resize_image


def images(model: torch.nn.Module, digits: int) -> torch.Tensor:
    h, w = model.input_size
    if digits:
        from camkit.data import digits as make

        return torch.stack([resize_image(s.image, (h, w)) for s in make(digits, seed=3, split="test")])
    from camkit.data.photos import samples

    return torch.stack([resize_image(s.image, (h, w)) for s in samples()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--digits", type=int, default=0, help="use N generated digits images instead of the photos")
    ap.add_argument("--methods", default="guided-backprop,guided-gradcam,gradcam")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = camkit.models.load(args.model)
    x = images(model, args.digits)
    print(f"{args.model}: {len(x)} images {tuple(x.shape[-2:])}, {args.threads} threads, torch {torch.__version__}")
    for name in args.methods.split(","):
        method = camkit.create(name, model, layer=getattr(model, "default_layer", "auto"))
        for target in (None, camkit.TopK(3)):
            t0 = time.perf_counter()
            batched = method(x, target)
            alone = torch.cat([method(x[i:i + 1], target) for i in range(len(x))])
            diff = (batched - alone).abs()
            dims = tuple(range(1, alone.dim()))
            rel = (diff.amax(dims) / alone.abs().amax(dims)).max()
            print(f"  {name:16s} {'top1' if target is None else 'top3':5s} max|batched-alone| {diff.max():.2e}  "
                  f"max|alone| {alone.abs().max():.2e}  worst image ratio {rel:.2e}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
