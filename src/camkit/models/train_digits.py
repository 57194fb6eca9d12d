"""Train the bundled digits models reproducibly on the generated digits set (CPU, minutes).

``python -m camkit.models.train_digits [names...] [--seed 0] [--out DIR]`` trains each model on
``digits(n_train, seed, split="train")`` (AdamW, one-cycle learning rate, cross-entropy), reports
top-1 accuracy on ``digits(n_test, seed + 1000, split="test")`` (other source digits, other seed)
and saves a float16 state dict ``DIR/<name>.pt``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.models.digits_nets import DIGITS_ARCHITECTURES, DIGITS_SIZE

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model."""

    epochs: int
    lr: float
    weight_decay: float = 0.05
    batch_size: int = 128


RECIPES: dict[str, Recipe] = {
    "digits_resnet": Recipe(epochs=4, lr=3e-3),
    "digits_vgg": Recipe(epochs=4, lr=3e-3),
    "digits_vit": Recipe(epochs=10, lr=1.5e-3),
}


def generated_tensors(n: int, seed: int, split: str) -> tuple[Tensor, Tensor]:
    """``n`` digits images as a uint8 ``(n, 3, 64, 64)`` tensor and their labels."""
    from camkit.data.digits import digits

    ds = digits(n, seed=seed, size=DIGITS_SIZE, split=split)  # type: ignore[arg-type]
    images = torch.empty((n, 3, DIGITS_SIZE, DIGITS_SIZE), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    for i in range(n):
        s = ds[i]
        images[i] = (s.image * 255).round().to(torch.uint8)
        labels[i] = int(s.label)  # type: ignore[arg-type]
    return images, labels


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy; ``images`` uint8 or float in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            x = x.float() / 255 if x.dtype == torch.uint8 else x
            correct += int((model(x).argmax(1) == labels[i:i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(images), 1)


def train(name: str, seed: int = 0, n_train: int = 16000, n_test: int = 1000,
          recipe: Recipe | None = None, data: tuple[Tensor, Tensor] | None = None,
          log: bool = True) -> tuple[nn.Module, float]:
    """Train digits model ``name`` from seed ``seed``; return it (eval mode) and its held-out accuracy."""
    if name not in DIGITS_ARCHITECTURES:
        raise ValueError(f"unknown digits model {name!r}; known: {sorted(DIGITS_ARCHITECTURES)}")
    recipe = recipe or RECIPES[name]
    torch.manual_seed(seed)
    model = DIGITS_ARCHITECTURES[name]()
    images, labels = data if data is not None else generated_tensors(n_train, seed, "train")
    test_images, test_labels = generated_tensors(n_test, seed + 1000, "test")
    steps_per_epoch = (len(images) + recipe.batch_size - 1) // recipe.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x = images[idx].float() / 255
            if torch.rand((), generator=gen) < 0.5:  # colour inversion keeps labels and boxes
                x = 1 - x
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.05)
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
    return model, accuracy(model, test_images, test_labels)


def save(model: nn.Module, path: Path) -> None:
    """Save a float16 copy of the state dict (integer buffers kept as they are)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: train the named digits models (all by default) and save their weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DIGITS_ARCHITECTURES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=16000)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = generated_tensors(args.n_train, args.seed, "train")
    for name in args.names:
        start = time.perf_counter()
        model, acc = train(name, seed=args.seed, data=data)
        path = args.out / f"{name}.pt"
        save(model, path)
        print(f"{name}: held-out top-1 {acc:.4f}, {time.perf_counter() - start:.0f}s, "
              f"{path} ({path.stat().st_size / 1e3:.0f} kB)", flush=True)


if __name__ == "__main__":
    main()
