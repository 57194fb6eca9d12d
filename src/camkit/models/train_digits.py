"""Train the bundled digits models reproducibly on the generated digits set (CPU, minutes).

``python -m camkit.models.train_digits [names...] [--seed 0] [--out DIR]`` trains each model on
``digits(n_train, seed, split="train")`` (AdamW, one-cycle learning rate, cross-entropy with label
smoothing, optionally distillation from a bundled teacher; see `Recipe`), reports
top-1 accuracy on ``digits(n_test, seed + 1000, split="test")`` (other source digits, other seed)
and saves a float16 state dict ``DIR/<name>.pt``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.errors import UnsupportedModelError
from camkit.models.digits_nets import DIGITS_ARCHITECTURES, DIGITS_SIZE

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model.

    ``warmup``: share of the steps spent warming up (one-cycle: linear-ish warmup, then cosine decay);
    ``teacher``: a bundled digits model whose softened predictions (temperature ``temperature``, computed
    once on the training images) are distilled with weight ``distill`` (KL, scaled by
    ``temperature**2``) next to the label loss.
    """

    epochs: int
    lr: float
    weight_decay: float = 0.05
    batch_size: int = 128
    warmup: float = 0.15
    label_smoothing: float = 0.05
    teacher: str | None = None
    distill: float = 0.0
    temperature: float = 2.0


RECIPES: dict[str, Recipe] = {
    "digits_resnet": Recipe(epochs=4, lr=3e-3),
    "digits_vgg": Recipe(epochs=4, lr=3e-3),
    # hybrid ViT (conv stem): distilled from the bundled digits_resnet, which must be in WEIGHTS_DIR
    "digits_vit": Recipe(epochs=16, lr=2e-3, warmup=0.1, teacher="digits_resnet", distill=0.5, temperature=2.0),
}


def _render_range(args: tuple[int, int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    from camkit.data.digits import digits

    start, stop, seed, split = args
    ds = digits(stop, seed=seed, size=DIGITS_SIZE, split=split)  # type: ignore[arg-type]
    items = [ds[i] for i in range(start, stop)]
    images = np.stack([np.rint(s.image.numpy() * 255).astype(np.uint8) for s in items])
    return images, np.array([int(s.label) for s in items], dtype=np.int64)  # type: ignore[arg-type]


def generated_tensors(n: int, seed: int, split: str, workers: int = 1) -> tuple[Tensor, Tensor]:
    """``n`` digits images as a uint8 ``(n, 3, 64, 64)`` tensor and their labels.

    Item ``i`` does not depend on ``workers`` (each item has its own random stream)."""
    chunks = [(a, min(a + 1000, n), seed, split) for a in range(0, n, 1000)]
    if workers > 1 and len(chunks) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_range, chunks)
    else:
        parts = [_render_range(c) for c in chunks]
    if not parts:
        return torch.empty((0, 3, DIGITS_SIZE, DIGITS_SIZE), dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy; ``images`` uint8 or float in [0, 1] (moved to the model's device)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            x = x.float() / 255 if x.dtype == torch.uint8 else x
            correct += int((model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(images), 1)


@torch.no_grad()
def teacher_logits(name: str, images: Tensor, batch_size: int = 256, device: str = "cpu") -> Tensor:
    """Logits of the bundled model ``name`` on uint8 ``images`` (a float32 ``(n, classes)`` tensor on the CPU)."""
    from camkit.models.zoo import load

    teacher = load(name).to(device).eval()
    return torch.cat([teacher(images[i:i + batch_size].to(device).float() / 255).float().cpu()
                      for i in range(0, len(images), batch_size)])


def train(name: str, seed: int = 0, n_train: int = 12000, n_test: int = 1000,
          recipe: Recipe | None = None, data: tuple[Tensor, Tensor] | None = None,
          log: bool = True, device: str = "cpu") -> tuple[nn.Module, float]:
    """Train digits model ``name`` from seed ``seed``; return it (eval mode) and its held-out accuracy."""
    if name not in DIGITS_ARCHITECTURES:
        raise ValueError(f"unknown digits model {name!r}; known: {sorted(DIGITS_ARCHITECTURES)}")
    recipe = recipe or RECIPES[name]
    torch.manual_seed(seed)
    model = DIGITS_ARCHITECTURES[name]().to(device)
    images, labels = data if data is not None else generated_tensors(n_train, seed, "train")
    test_images, test_labels = generated_tensors(n_test, seed + 1000, "test")
    steps_per_epoch = (len(images) + recipe.batch_size - 1) // recipe.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
                                                pct_start=recipe.warmup)
    soft_targets = None
    if recipe.teacher and recipe.distill > 0:
        soft_targets = F.softmax(teacher_logits(recipe.teacher, images, device=device) / recipe.temperature, dim=1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x = images[idx].to(device).float() / 255
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx].to(device), label_smoothing=recipe.label_smoothing)
            if soft_targets is not None:
                kd = F.kl_div(F.log_softmax(logits / recipe.temperature, dim=1), soft_targets[idx].to(device),
                              reduction="batchmean")
                loss = (1 - recipe.distill) * loss + recipe.distill * recipe.temperature ** 2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if log:
            acc = accuracy(model, test_images, test_labels)
            print(f"{name} epoch {epoch + 1}/{recipe.epochs} loss {total / steps_per_epoch:.3f} "
                  f"held-out acc {acc:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    model.eval()
    return model.cpu(), accuracy(model.cpu(), test_images, test_labels)


def save(model: nn.Module, path: Path) -> None:
    """Save a float16 copy of the state dict (integer buffers kept as they are)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's options (``python -m camkit.models.train_digits`` and ``camkit train-digits``)."""
    parser.add_argument("names", nargs="*", default=list(DIGITS_ARCHITECTURES),
                        help=f"models to train (default: all of {', '.join(DIGITS_ARCHITECTURES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=12000)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the weights go (default: the bundled ones)")
    parser.add_argument("--threads", dest="train_threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=0, help="override the recipes' epochs")


def run(args: argparse.Namespace) -> None:
    """Train the models ``args`` names (see `add_arguments`) and save their weights."""
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        raise UnsupportedModelError(f"unknown digits model(s) {unknown}; choose from {', '.join(sorted(RECIPES))}")
    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    start = time.perf_counter()
    data = generated_tensors(args.n_train, args.seed, "train", workers=args.workers)
    print(f"generated {args.n_train} training images in {time.perf_counter() - start:.0f}s", flush=True)
    for name in args.names:
        start = time.perf_counter()
        recipe = RECIPES[name]
        if args.epochs:
            recipe = dataclasses.replace(recipe, epochs=args.epochs)
        model, acc = train(name, seed=args.seed, data=data, recipe=recipe, device=args.device)
        path = args.out / f"{name}.pt"
        save(model, path)
        print(f"{name}: held-out top-1 {acc:.4f}, {time.perf_counter() - start:.0f}s, "
              f"{path} ({path.stat().st_size / 1e3:.0f} kB)", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: train the named digits models (all by default) and save their weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
