"""Train the bundled 3-D digits nets (clips and volumes) reproducibly on the generated sets (CPU, minutes).

    python tools/train_digits3d.py [moving_digits_net] [digit_volumes_net] [--seed 0] [--out DIR]

Each net trains on ``n_train`` items of its set (``MovingDigits`` / ``DigitVolumes``, split
``"train"``, seed ``seed``) with AdamW, a one-cycle learning rate and label smoothing, reports top-1
accuracy on ``n_test`` held-out items (split ``"test"``: other source digits, seed ``seed + 1000``)
and saves a float16 state dict ``DIR/<name>.pt`` (default: the bundled weights folder).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from camkit.data.digits3d import DigitVolumes, MovingDigits
from camkit.models.digits3d_nets import DIGITS3D_ARCHITECTURES
from camkit.models.train_digits import WEIGHTS_DIR, accuracy, save


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one net and the set it learns from."""

    dataset: type
    n_train: int
    epochs: int
    lr: float = 4e-3
    batch_size: int = 64
    weight_decay: float = 0.05
    label_smoothing: float = 0.05


RECIPES = {
    "moving_digits_net": Recipe(MovingDigits, n_train=3000, epochs=5),
    "digit_volumes_net": Recipe(DigitVolumes, n_train=3000, epochs=5),
}


def tensors(dataset: type, n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` items as a uint8 ``(n, C, D, H, W)`` tensor and their labels."""
    ds = dataset(n, seed=seed, split=split)
    items = [ds[i] for i in range(n)]
    x = np.stack([np.rint(s.image.numpy() * 255).astype(np.uint8) for s in items])
    return torch.from_numpy(x), torch.tensor([int(s.label) for s in items])


def train(name: str, seed: int = 0, n_test: int = 500, epochs: int = 0, n_train: int = 0) -> tuple[torch.nn.Module, float]:
    """Train net ``name``; return it (eval mode) and its held-out top-1 accuracy."""
    recipe = RECIPES[name]
    torch.manual_seed(seed)
    model = DIGITS3D_ARCHITECTURES[name]()
    start = time.perf_counter()
    x, y = tensors(recipe.dataset, n_train or recipe.n_train, seed, "train")
    xt, yt = tensors(recipe.dataset, n_test, seed + 1000, "test")
    print(f"{name}: generated {len(x)} + {len(xt)} items in {time.perf_counter() - start:.0f}s", flush=True)
    epochs = epochs or recipe.epochs
    steps = (len(x) + recipe.batch_size - 1) // recipe.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=epochs * steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for b in range(steps):
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            loss = F.cross_entropy(model(x[idx].float() / 255), y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"{name} epoch {epoch + 1}/{epochs} loss {total / steps:.3f} held-out acc "
              f"{accuracy(model, xt, yt, 64):.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    model.eval()
    return model, accuracy(model, xt, yt, 64)


def main(argv: list[str] | None = None) -> None:
    """Train the named nets (both by default) and save their weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(RECIPES), help=f"nets to train (default: {', '.join(RECIPES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--epochs", type=int, default=0, help="override the recipes' epochs")
    parser.add_argument("--n-train", type=int, default=0, help="override the recipes' training set size")
    parser.add_argument("--n-test", type=int, default=500, help="held-out items for the accuracy")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.names:
        if name not in RECIPES:
            parser.error(f"unknown net {name!r}; choose from {', '.join(RECIPES)}")
        start = time.perf_counter()
        model, acc = train(name, seed=args.seed, n_test=args.n_test, epochs=args.epochs, n_train=args.n_train)
        path = args.out / f"{name}.pt"
        save(model, path)
        print(f"{name}: held-out top-1 {acc:.4f} (chance 0.10), {time.perf_counter() - start:.0f}s, "
              f"{path} ({path.stat().st_size / 1e3:.0f} kB)", flush=True)


if __name__ == "__main__":
    main()
