"""Small models whose CAMs can be computed by hand (shared by the method tests)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class GapNet(nn.Module):
    """stem -> feat (target) -> [tail conv + ReLU] -> global average pooling -> fc."""

    def __init__(self, c: int = 6, n_cls: int = 5, deep_tail: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(4, c, 3, padding=1, stride=2), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()) if deep_tail else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_cls)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.mid(a)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.feat(self.stem(x)))


def acts_and_grads(model: GapNet, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference A and dS/dA at ``model.feat`` from plain autograd on the whole model (float64)."""
    a = model.feat(model.stem(x)).detach().requires_grad_(True)
    s = model.tail(a).gather(1, cls.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(s, a)
    return a.detach(), g


class TinyViT(nn.Module):
    """Patch conv, ``prefix`` learned tokens (class + registers), transformer blocks, class-token head."""

    def __init__(self, patch: int = 4, dim: int = 16, prefix: int = 1, n_cls: int = 5, seq_first: bool = False) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix_tokens = nn.Parameter(torch.randn(1, prefix, dim) * 0.1)
        self.seq_first = seq_first
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=not seq_first, norm_first=True)
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix_tokens.expand(t.shape[0], -1, -1), t], dim=1)
        if self.seq_first:
            t = t.transpose(0, 1)
        for b in self.blocks:
            t = b(t)
        t = self.norm(t)
        cls = t[0] if self.seq_first else t[:, 0]
        return self.head(cls)


class FunctionalNet(nn.Module):
    """A model using functional ReLU and returning a dict (tests output handling)."""

    def __init__(self, kind: str = "tensor") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.feat = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        a = F.relu(self.feat(F.relu(self.conv(x))))
        out = self.fc(a.mean((2, 3)))
        if self.kind == "dict":
            return {"logits": out, "aux": a}
        if self.kind == "tuple":
            return out, a
        if self.kind == "object":
            return type("Out", (), {"logits": out})()
        return out
