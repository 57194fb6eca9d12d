"""``camkit layers MODEL``: every layer with the output shape the model really produces, how camkit
reads it (or why not), and the automatic choice with its reading, equal to what an explanation uses."""
from __future__ import annotations

import re

import pytest
import torch

import camkit
from camkit.bench.sources import load_model
from camkit.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _table(out: str) -> dict[str, tuple[str, str, str]]:
    """layer name -> (type, output, read as) of the printed table."""
    rows = {}
    for line in out.splitlines()[2:]:
        m = re.match(r"^(\S+)\s+(\S+)\s+(\(.*?\)|-)\s+(.*)$", line)
        if m and not line.startswith("auto"):
            rows[m[1]] = (m[2], m[3], m[4])
    return rows


def _shapes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    """Each module's first output shape on ``x``, recorded by plain forward hooks (not camkit's trace)."""
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                shapes.setdefault(name, tuple(out.shape))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def test_layers_of_a_zoo_model(capsys):
    assert main(["layers", "digits_resnet", "--size", "96", "128", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    model = load_model("digits_resnet")
    shapes = _shapes(model, torch.rand(1, 3, 96, 128))
    assert out.splitlines()[0] == f"digits_resnet: {len(rows)} layers on a 1x3x96x128 input"
    assert set(rows) == set(shapes)
    for name, shape in shapes.items():
        assert rows[name][1] == str(shape), name
    assert rows["layer4"] == ("BasicBlock", "(1, 96, 12, 16)", "nchw 12×16")
    assert rows["layer1.relu"][2] == "refused: called 2 times in one forward"
    assert rows["fc"][2].startswith("refused: not a grid")
    assert rows["avgpool"][2].startswith("refused")
    auto = out.splitlines()[-1]
    assert auto.startswith("auto (--layer left out): layer4 (nchw 12×16): the model's default layer")
    assert camkit.GradCAM(model).explain(torch.rand(1, 3, 96, 128)).layout == ["nchw 12×16"]


def test_layers_of_a_timm_vit(capsys):
    assert main(["layers", "timm:test_vit", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert rows["blocks.0.attn.qkv"][2].startswith("refused: computed inside an attention block")
    assert rows["blocks.0.mlp.fc1"][2] == "refused: width 192 is not the residual stream's [64] (an MLP hidden layer)"
    assert rows["blocks.5.norm1"] == ("LayerNorm", "(1, 101, 64)", "tokens: 1 prefix, 10×10")
    assert rows["head"][2].startswith("refused")
    model = load_model("timm:test_vit")
    e = camkit.GradCAM(model).explain(torch.rand(1, 3, *model.input_size))
    assert out.splitlines()[-1].startswith(f"auto (--layer left out): {e.layers[0]} ({e.layout[0]}): ")
    assert e.layers == ["blocks.5.norm1"]
    names = list(rows)  # a block is listed before the layers inside it, as named_modules lists them
    assert names.index("blocks.5") < names.index("blocks.5.norm1") < names.index("blocks.5.mlp.fc1")


def test_layers_refuses_a_size_it_cannot_use(capsys):
    assert main(["layers", "digits_resnet", "--size", "0", "64"]) == 1
    assert "--size takes a height and a width >= 1" in capsys.readouterr().err
