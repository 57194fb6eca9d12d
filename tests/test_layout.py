"""Layouts read from evidence: planted models whose score depends on one known grid cell, for every
layout camkit reads, and the outputs it must refuse (never a map from a tensor that is not one)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import camkit
from camkit.layers.layout import readings

GRID = (3, 5)  # non-square, so a transposed or mis-split grid cannot pass
INPUT = (12, 20)  # stride 4
CELL = (1, 3)


class Planted(nn.Module):
    """``embed`` (stride-4 conv) -> ``feat`` (the explained layer, in ``layout``) -> the features of grid
    cell ``CELL`` only -> ``head``. The score depends on that one cell and nothing else."""

    def __init__(self, layout: str, prefix: int = 0, patch: bool = True, c: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        # kernel == stride is a patch embedding camkit can see; kernel 5 / padding 2 hides the stride
        self.embed = nn.Conv2d(3, c, 4, stride=4) if patch else nn.Conv2d(3, c, 5, stride=4, padding=2)
        self.feat = _ToLayout(layout, prefix, c)
        self.head = nn.Linear(c, 4)
        self.layout, self.prefix = layout, prefix
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.feat(self.embed(x))
        i, j = CELL
        k = self.prefix + i * GRID[1] + j
        cell = {"nchw": lambda: t[:, :, i, j], "nhwc": lambda: t[:, i, j, :], "tokens": lambda: t[:, k, :],
                "seq": lambda: t[k, :, :]}[self.layout]()
        return self.head(torch.relu(cell))


class _ToLayout(nn.Module):
    def __init__(self, layout: str, prefix: int, c: int) -> None:
        super().__init__()
        self.layout = layout
        self.prefix_tokens = nn.Parameter(torch.zeros(1, prefix, c))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.layout == "nchw":
            return a
        if self.layout == "nhwc":
            return a.permute(0, 2, 3, 1).contiguous()
        t = torch.cat([self.prefix_tokens.expand(a.shape[0], -1, -1), a.flatten(2).transpose(1, 2)], dim=1)
        return t.transpose(0, 1).contiguous() if self.layout == "seq" else t


CASES = [("nchw", 0, True, "nchw 3\u00d75"), ("nhwc", 0, True, "nhwc 3\u00d75")] + [
    ("tokens", p, patch, f"tokens: {p} prefix, 3\u00d75") for p in (0, 1, 2, 5) for patch in (True, False)
] + [("seq", 1, True, "tokens (sequence-first): 1 prefix, 3\u00d75"), ("seq", 0, False, "tokens (sequence-first): 0 prefix, 3\u00d75")]


@pytest.mark.parametrize("layout, prefix, patch, expected", CASES)
@pytest.mark.parametrize("method", ["layercam", "hirescam"])  # per-position maps: zero off the cell
def test_the_map_peaks_in_the_one_cell_the_score_depends_on(layout, prefix, patch, expected, method):
    model = Planted(layout, prefix, patch).eval()
    x = torch.rand(2, 3, *INPUT, generator=torch.Generator().manual_seed(1))
    e = camkit.create(method, model).explain(x)
    # an NCHW ``feat`` passes its input through: the map is named after the module that computed it
    assert e.layers == ["embed" if layout == "nchw" else "feat"] and e.layout == [expected]
    raw = e.raw.flatten(1)
    assert raw.argmax(1).tolist() == [CELL[0] * GRID[1] + CELL[1]] * 2
    peak = e.maps.flatten(1).argmax(1)  # at the input size: inside the cell's 4x4 pixels
    rows, cols = peak // INPUT[1], peak % INPUT[1]
    assert ((rows // 4) == CELL[0]).all() and ((cols // 4) == CELL[1]).all()


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "tokens"])
def test_a_forced_layout_reads_the_same(layout):
    model = Planted("seq" if layout == "tokens" else layout, 2).eval()
    x = torch.rand(1, 3, *INPUT)
    auto = camkit.LayerCAM(model).explain(x)
    forced = camkit.LayerCAM(model, layout=layout).explain(x)
    torch.testing.assert_close(auto.maps, forced.maps)


def test_a_wrong_forced_layout_or_bad_option_is_refused_or_visible():
    model = Planted("nhwc").eval()
    x = torch.rand(1, 3, *INPUT)
    e = camkit.LayerCAM(model, layout="nchw").explain(x)  # the user's word: (B, 3, 5, 6) read as C=3, 5x6
    assert e.layout == ["nchw 5\u00d76"]
    with pytest.raises(camkit.InputError, match="layout must be"):
        camkit.LayerCAM(model, layout="chw")
    with pytest.raises(camkit.InputError, match="either layout= or reshape="):
        camkit.LayerCAM(model, layout="nhwc", reshape=lambda t: t)


# -- outputs that are not feature maps ----------------------------------------------------------------

class Heads(nn.Module):
    """A token model with an attention block; ``per_head`` exposes (B, heads, N, d) as a module output."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm(t))
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.per_head = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        q, k, v = self.qkv(t).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        v = self.per_head(v)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("layer, match", [
    ("attn.per_head", "cannot read as a feature map"),  # (B, heads, N, d): no stride fits
    ("attn.qkv", "attention internal"),  # (B, N, 3C) tokens, but computed inside the attention block
    ("fc1", "MLP hidden"),  # (B, N, 4C): not a residual-stream width
])
def test_attention_internals_and_hidden_widths_are_never_maps(layer, match):
    model = Heads().eval()
    x = torch.rand(1, 3, 16, 36)  # 4 x 9 tokens
    with pytest.raises(camkit.InputError, match=match):
        camkit.GradCAM(model, layer=layer).explain(x)
    # auto: the last residual-width token output that is not a residual branch before its add (attn and
    # fc2 are added to the stream they were computed from), i.e. the pre-attention norm, as on a ViT
    assert camkit.GradCAM(model).explain(x).layers == ["norm"]
    forced = camkit.GradCAM(model, layer="fc1", layout="tokens").explain(x)  # the user may insist
    assert forced.layout == ["tokens: 0 prefix, 4\u00d79"]


def test_unreadable_shapes_say_what_they_are_and_what_would_work():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.vec = nn.Flatten()
            self.odd = nn.Identity()
            self.fc = nn.Linear(4 * 10 * 10, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.vec(self.conv(x))
            self.odd(f[:, :396].view(f.shape[0], 99, 4))  # 99 tokens: no prefix (<= 16) + grid of 12x12
            return self.fc(f)

    x = torch.rand(1, 3, 12, 12)
    with pytest.raises(camkit.InputError, match=r"outputs shape \(1, 400\).*layout=.*reshape="):
        camkit.GradCAM(Flat(), layer="vec").explain(x)
    with pytest.raises(camkit.InputError, match=r"99 tokens are no grid"):
        camkit.EigenCAM(Flat(), layer="odd").explain(x)


def test_a_layer_called_with_two_shapes_is_refused():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(self.conv(self.act(x))).mean((2, 3)))

    with pytest.raises(camkit.InputError, match=r"called more than once.*\(1, 3, 16, 16\) and \(1, 4, 7, 7\)"):
        camkit.GradCAM(Shared(), layer="act").explain(torch.rand(1, 3, 16, 16))


class Unrolled(nn.Module):
    """Tokens in a fixed non-raster order (as Hiera's unrolled stages): the grid must be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.order = torch.randperm(36, generator=torch.Generator().manual_seed(3))
        self.feat = nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)[:, self.order]
        return self.head(self.feat(t).mean(1))


def test_unrolled_token_orders_are_refused():
    with pytest.raises(camkit.InputError, match="not in raster order"):
        camkit.GradCAM(Unrolled(), layer="feat").explain(torch.rand(1, 3, 24, 24))
    model = Unrolled()
    model.order = torch.arange(36)  # the same model in raster order is read
    assert camkit.GradCAM(model, layer="feat").explain(torch.rand(1, 3, 24, 24)).layout == ["tokens: 0 prefix, 6\u00d76"]


def test_auto_cannot_decide_between_parallel_branches():
    class TwoStreams(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.left = nn.Conv2d(3, 4, 3, stride=2)
            self.right = nn.Conv2d(3, 4, 5, stride=2, padding=1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([self.left(x).mean((2, 3)), self.right(x).mean((2, 3))], 1))

    with pytest.raises(camkit.LayerNotFoundError, match=r"'left', 'right'"):
        camkit.GradCAM(TwoStreams()).explain(torch.rand(1, 3, 16, 16))
    assert camkit.GradCAM(TwoStreams(), layer=["left", "right"]).explain(torch.rand(1, 3, 16, 16)).layers == ["left", "right"]


@pytest.mark.parametrize("shape, hw, expected", [
    ((2, 7, 7, 768), (224, 224), ("nhwc", 7, 7, 0)),  # timm Swin: C=7, 7x768 is no grid
    ((2, 768, 7, 7), (224, 224), ("nchw", 7, 7, 0)),
    ((2, 512, 8, 8), (299, 299), ("nchw", 8, 8, 0)),  # Inception: valid convolutions lose 1.3 cells
    ((2, 1 + 4 + 18 * 14, 384), (288, 224), ("tokens", 18, 14, 5)),  # class + 4 registers, patch 16
    ((2, 16, 384), (224, 224), ("tokens", 4, 4, 0)),  # LeViT: no patch embedding, no prefix
    ((2, 2 + 12 * 20, 64), (48, 80), ("tokens", 12, 20, 2)),
])
def test_readings_from_shape(shape, hw, expected):
    r = readings(torch.empty(shape, device="meta"), 2, hw, None)[0]
    assert (r.kind, r.h, r.w, r.prefix) == expected


def test_no_reading_for_attention_shapes():
    for shape in [(2, 3, 197, 64), (2, 12, 50, 64), (2, 6, 1374, 64)]:
        assert readings(torch.empty(shape, device="meta"), 2, (224, 224), (16, 16)) == []
