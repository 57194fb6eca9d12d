"""What the ``camkit`` command says: errors and warnings in its flags (never ``weights=None``,
``layer='name'``, ``min_score`` or a list comprehension), advice that works, ``list`` with each
method's cost, ``train-digits`` with its own options, and a quiet stop when its reader goes away."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camkit.cli import build_parser, main

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Python phrasings that must not reach the command's output
PYTHON = re.compile(r"\b(layer|weights|layout|precision|targets|reshape)=|min_score|named_modules|\[n for ")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def photo(tmp_path):
    from camkit import viz
    from camkit.data import digits

    path = tmp_path / "digit.png"
    viz.to_pil(digits(1, seed=3)[0].image).save(path)
    return str(path)


@pytest.mark.parametrize("argv, flag", [
    (["--model", "digits_resnet", "--layer", "layer9"], "(camkit layers digits_resnet lists all"),
    (["--model", "digits_resnet", "--weights", "nosuchset"], "'default'], random or a path to a state-dict file"),
    (["--model", "torchvision:resnet18", "--weights", "missing.pth"], "pass --weights PATH to a local checkpoint"),
    (["--model", "digits_vit", "--weights", "random", "--layer", "blocks.0.mlp.fc1"], "or force --layout tokens"),
    (["--model", "digits_resnet", "--precision", "fp16"], "--precision fp16 is not supported on this CPU"),
])
def test_explain_errors_speak_in_flags(argv, flag, photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "fp16" in argv and getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)():
        pytest.skip("this CPU has AMX-FP16: fp16 is allowed")
    assert main(["explain", photo, "--threads", "1", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert flag in err, err
    assert not PYTHON.search(err), err
    assert [ln.startswith("camkit explain: error: ") for ln in err.splitlines()][-1:] == [True]  # one line, last


def test_bench_speaks_of_models_name_equals_weights(tmp_path, capsys):
    assert main(["bench", "--models", "torchvision:resnet18=missing.pth", "--data", "digits:1", "-q",
                 "-o", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "pass --models NAME=PATH to a local checkpoint" in err and "--models NAME=random" in err, err
    assert not PYTHON.search(err), err


def test_each_rule_rewrites_the_phrasing_the_library_uses():
    from camkit.cli.phrasing import to_cli

    args = build_parser().parse_args(["explain", "x.png", "--model", "timm:vit"])
    cases = {
        "no layer 'x'. (see [n for n, _ in model.named_modules()] for all 41 names, or use layer='auto')":
            "no layer 'x'. (camkit layers timm:vit lists all 41 with their output shapes; leave out --layer for the "
            "automatic choice)",
        "pass layer='name' or a list of them": "pass --layer NAME, or several comma-separated (camkit layers timm:vit "
                                               "lists them)",
        "has none (x); pass layer='name'": "has none (x); pass --layer NAME (camkit layers timm:vit lists them)",
        "pass layer= one of its backbone's feature maps": "pass --layer one of its backbone's feature maps",
        "a spatial output (layer='auto' picks one), force": "a spatial output (leaving out --layer picks one), force",
        "or pass weights='path/to/resnet50.pth'": "or pass --weights path/to/resnet50.pth",
        "or weights=None for random initialisation": "or --weights random for random initialisation",
        "lower min_score to explain it": "lower --min-score to explain it",
        "pass layout='nchw' or layout='nhwc'": "pass --layout nchw or --layout nhwc",
        "use precision='fp32' for this layer": "use --precision fp32 for this layer",
        "use precision='bf16' or 'fp32' on CPU, or 'fp16' on a CUDA device":
            "use --precision bf16 or fp32 on CPU, or fp16 on a CUDA device",
    }
    for library, command in cases.items():
        assert to_cli(library, args) == command


def test_library_warnings_print_as_one_line_in_flags(photo, tmp_path, capsys):
    code = main(["explain", photo, "--model", "digits_vit", "--weights", "random", "--method", "ablationcam",
                 "--precision", "bf16", "--threads", "1", "-o", str(tmp_path / "o")])
    assert code == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "Ablation-CAM replayed" in ln)
    assert line.startswith("camkit explain: warning: ") and "--precision bf16" in line and "--precision fp32" in line
    assert "RuntimeWarning" not in err and ".py:" not in err and not PYTHON.search(err)


def test_random_weights_advice_names_only_what_loads(monkeypatch, tmp_path):
    """No cached torchvision file: the advice is a state-dict file or a model with real weights, never
    'imagenet' (which would fail); with the file in the cache, 'imagenet' and where it was found."""
    from camkit.bench.sources import random_weights_warning

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    text = random_weights_warning("resnet50")
    assert "imagenet" not in text and "--weights FILE" in text and "efficientnet_lite0" in text
    assert "imagenet" not in random_weights_warning("timm:resnet18")
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert f"'imagenet' (torchvision's file, found at {cached})" in random_weights_warning("resnet50")


def test_list_prints_each_methods_cost(capsys):
    import camkit
    from camkit.methods import get

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in camkit.list_methods():
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        assert get(name).cost in line
        assert ("expensive" in line) == get(name).expensive
        assert ("attribution" in line) == (get(name).output == "attribution")
    assert "camkit layers MODEL" in out and not PYTHON.search(out.replace("weights=PATH", ""))


def test_train_digits_takes_its_own_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train-digits", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: camkit train-digits" in out and "--n-train" in out and "--epochs" in out
    args = build_parser().parse_args(["train-digits", "--seed", "3", "digits_vgg", "--epochs", "1"])
    assert args.names == ["digits_vgg"] and args.seed == 3 and args.epochs == 1
    assert main(["train-digits", "digits_nosuch"]) == 1  # refused before any data is generated
    assert "unknown digits model(s) ['digits_nosuch']" in capsys.readouterr().err


def test_a_closed_pipe_stops_quietly():
    """``camkit list | head``: the reader is gone before camkit writes; no error, no traceback."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "camkit", "list"], stdout=write, stderr=subprocess.PIPE, env=env,
                          text=True, timeout=300)
    os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr
