"""precision= (autocast forward, float32 results) and channels_last= on every method, on the CPU."""
from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

import camkit
from camkit.core.precision import channels_last_model, model_forward
from toy_models import GapNet

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = [m for m in camkit.list_methods() if not camkit.methods.get(m).requires]  # LeGrad: tests/test_methods_peer_parity_b.py


class Net(GapNet):
    """GapNet with a deeper tail (so gradients pass ReLUs) that records the dtype its stem computes in."""

    def __init__(self) -> None:
        super().__init__(c=8, n_cls=6, deep_tail=True, seed=3)
        self.seen: list[torch.dtype] = []
        self.stem.register_forward_hook(lambda m, i, o: self.seen.append(o.dtype))


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1) - a.flatten(1).mean(1, keepdim=True), b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _layer(name: str) -> str:
    return "feat" if name != "cam" else "mid"


def _targets(name: str):
    """TopK(2), or none for a method that explains no target (DFF's concepts)."""
    return None if camkit.methods.get(name).output == "concepts" else camkit.TopK(2)


@pytest.mark.parametrize("name", METHODS)
def test_bf16_forward_float32_results_close_to_float32(name):
    model, x = Net(), _x()
    ref = camkit.create(name, model, layer=_layer(name)).explain(x, _targets(name))
    model.seen.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = camkit.create(name, model, layer=_layer(name), precision="bf16").explain(x, _targets(name))
    # the tail after "feat" is not affine: Ablation-CAM replays in bf16, and says what that costs
    assert [str(w.message)[:40] for w in caught] == (["Ablation-CAM replayed the ablations of l"] if name == "ablationcam" else [])
    assert model.seen and set(model.seen) == {torch.bfloat16}  # every model call ran under autocast
    for t in (e.maps, e.scores, e.logits) + ((e.weights,) if isinstance(e.weights, torch.Tensor) else ()):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert e.maps.shape == ref.maps.shape
    assert (e.targets is None and ref.targets is None) or torch.equal(e.targets, ref.targets)  # DFF: no labels here
    if e.output == "concepts":  # NMF factors may trade places under bf16 rounding; their product W H may not
        product = lambda v: torch.einsum("bkc,bkhw->bchw", v.weights, v.raw)  # noqa: E731
        assert (product(e) - product(ref)).norm() < 0.05 * product(ref).norm()
    else:
        same = (e.maps - ref.maps).flatten(2).abs().amax(-1).flatten() < 1e-2  # e.g. both all-zero (RandomCAM)
        assert ((_corr(e.maps.flatten(0, 1), ref.maps.flatten(0, 1)) > 0.95) | same).all()
    assert not any(isinstance(m, nn.Module) and "forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("name", METHODS)
def test_channels_last_gives_the_float32_maps_and_restores_the_model(name):
    model, x = Net(), _x()
    weights = {n: (p, p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    ref = camkit.create(name, model, layer=_layer(name)).explain(x, _targets(name))
    seen: list[bool] = []
    h = model.feat[0].register_forward_pre_hook(
        lambda m, a: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    e = camkit.create(name, model, layer=_layer(name), channels_last=True).explain(x, _targets(name))
    h.remove()
    assert seen and all(seen)
    torch.testing.assert_close(e.maps, ref.maps, rtol=1e-4, atol=1e-4)
    for n, p in model.named_parameters():
        assert weights[n] == (p, p.data_ptr(), p.stride())


def test_bad_options_are_refused_with_a_clear_message():
    model = Net()
    with pytest.raises(camkit.InputError, match="precision must be one of"):
        camkit.GradCAM(model, layer="feat", precision="int8")
    with pytest.raises(camkit.InputError, match="channels_last must be True or False"):
        camkit.GradCAM(model, layer="feat", channels_last="yes")
    assert camkit.GradCAM(model, layer="feat", precision="bfloat16").precision == "bf16"
    if not getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)():
        with pytest.raises(camkit.CamkitError, match="'fp16' is not supported on this CPU"):
            camkit.GradCAM(model, layer="feat", precision="fp16")(_x())


class Overflows(Net):
    """Its logits become inf when its forward runs in reduced precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(self.stem(x))
        out = self.tail(a)
        return out / 0.0 if a.dtype != torch.float32 else out


@pytest.mark.parametrize("name", ["gradcam", "ablationcam", "scorecam", "guided-backprop"])
def test_non_finite_scores_under_autocast_name_the_precision(name):
    model = Overflows()
    camkit.create(name, model, layer="feat")(_x())  # fine in float32
    with pytest.raises(camkit.CamkitError, match=r"precision='bf16' \(autocast\) produced NaN/inf"):
        camkit.create(name, model, layer="feat", precision="bf16")(_x())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_model_restored_when_the_method_raises():
    model, x = Net(), _x()
    ptrs = [p.data_ptr() for p in model.parameters()]

    def boom(out):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        camkit.GradCAM(model, layer="feat", precision="bf16", channels_last=True).explain(x, targets=boom)
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not torch.is_autocast_enabled("cpu")
    model.seen.clear()
    model(x)
    assert model.seen == [torch.float32]


def test_channels_last_is_restored_once_when_calls_overlap():
    model = Net()
    conv = model.feat[0].weight
    original = conv.data_ptr()
    inside, release = threading.Event(), threading.Event()

    def other():
        with channels_last_model(model):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(10)
    with channels_last_model(model):  # entered while the other thread holds the model
        assert conv.is_contiguous(memory_format=torch.channels_last)
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the other call still runs
    release.set()
    t.join()
    assert conv.data_ptr() == original and conv.is_contiguous()


def test_other_threads_calling_the_model_are_not_autocast():
    model, x = Net(), _x()
    with model_forward(model, "bf16", False, x.device):
        model.seen.clear()
        t = threading.Thread(target=lambda: model(x))
        t.start()
        t.join()
        assert model.seen == [torch.float32]
        model(x)
        assert model.seen[-1] == torch.bfloat16


def test_bench_precision_and_channels_last(tmp_path, capsys):
    import json

    from camkit.cli import main

    out = tmp_path / "run"
    argv = ["bench", "--models", "digits_resnet", "--methods", "gradcam,ablationcam", "--data", "digits:2",
            "--steps", "2", "--batch-size", "2", "--no-baselines", "--threads", "1", "-q", "-o", str(out),
            "--precision", "bf16", "--channels-last"]
    assert main(argv) == 0
    maps = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    maps = [r for r in maps if r["type"] == "map"]
    assert {r["method"] for r in maps} == {"gradcam", "ablationcam"}
    assert all(r["protocol"]["precision"] == "bf16" and r["protocol"]["channels_last"] for r in maps)
    assert all(r["iou"] is None or 0 <= r["iou"] <= 1 for r in maps)
    assert "bf16 autocast, channels-last" in (out / "table.md").read_text()
    if not getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)():
        capsys.readouterr()
        assert main(argv[:-3] + ["--precision", "fp16", "-o", str(tmp_path / "fp16")]) == 1
        err = capsys.readouterr().err
        assert "--precision fp16 is not supported on this CPU" in err and len(err.strip().splitlines()) == 1
