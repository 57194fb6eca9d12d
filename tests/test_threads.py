"""Calls on one shared model from several threads return exactly what sequential calls return.

Two kinds of test: deterministic overlaps (a gate module in the model parks one thread inside a
chosen part of a call -- the engine's hooked forward, Ablation-CAM's replay, guided backprop's
ReLU mode, the auto-layer probe -- while the main thread runs every method), and a stress run of
N threads x every method x repeats with frequent thread switches.
"""
from __future__ import annotations

import sys
import threading
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import camkit
from camkit.core import hooks as core_hooks
from camkit.layers import probe as core_probe

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = [m for m in camkit.list_methods() if not camkit.methods.get(m).requires]  # LeGrad: tests/test_methods_peer_parity_b.py
OPTIONS = {"smoothgradcam++": {"n": 3}, "ablationcam": {"batch_size": 5}, "scorecam": {"batch_size": 7},
           "sscam": {"samples": 2, "batch_size": 7}, "iscam": {"samples": 2, "batch_size": 7}, "sess": {"num_scales": 3}}
TARGETS = [None, camkit.TopK(2), 3]


class Gate(nn.Module):
    """Identity that, in one chosen thread, stops at its ``at``-th pass until released. It sits in
    the model after ``layer2`` (``where="mid"``) or runs as a pre-hook of the whole model, before
    any module (``where="start"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: int | None = None
        self.at = 0
        self.where = "mid"
        self.calls: Counter[int] = Counter()
        self.reached = threading.Event()
        self.release = threading.Event()

    def park(self, at: int, where: str) -> None:
        """Park the calling thread at pass ``at`` (call this in the thread to park)."""
        self.thread, self.at, self.where = threading.get_ident(), at, where

    def _check(self, where: str) -> None:
        t = threading.get_ident()
        if t == self.thread and where == self.where:
            self.calls[t] += 1
            if self.calls[t] == self.at:
                self.reached.set()
                assert self.release.wait(60), "gate never released"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check("mid")
        return x

    def pre_hook(self, _model: nn.Module, _args: object) -> None:
        self._check("start")


class SmallResNet(nn.Module):
    """stem -> two torchvision BasicBlocks (skip connections, BatchNorm, in-place ReLU) -> gate -> GAP -> fc."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(8, 8)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=down)
        self.gate = Gate()
        self.register_forward_pre_hook(self.gate.pre_hook)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.gate(self.layer2(self.layer1(self.stem(x))))).flatten(1))


def _x(seed: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _run(model: nn.Module, name: str, x: torch.Tensor, target, layer: str = "layer2") -> torch.Tensor:
    concepts = camkit.methods.get(name).output == "concepts"  # DFF explains no target
    return camkit.create(name, model, layer=layer, **OPTIONS.get(name, {}))(x, targets=None if concepts else target)


def _state(model: nn.Module) -> dict:
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: tuple(len(getattr(m, d)) for d in ("_forward_hooks", "_forward_pre_hooks")) for n, m in model.named_modules()},
        "forward": [n for n, m in model.named_modules() if "forward" in m.__dict__],
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: id(p.grad) for n, p in model.named_parameters()},
    }


@contextmanager
def _fast_switching():
    """Switch threads every 10 us instead of 5 ms, so that calls interleave finely."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _in_thread(fn):
    """Start ``fn`` in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    box: dict = {}

    def body():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, box


# -- deterministic overlaps: one thread parked inside a call, the others run every method -------------------

PARKED = [
    ("gradcam", 1, "mid", "layer2"),  # in the engine's forward, after its capture hook fired on layer2
    ("ablationcam", 2, "start", "layer2"),  # starting the first tail replay: layer2's and the stem's forwards replaced
    ("ablationcam", 2, "mid", "layer2"),  # in the replay's tail
    ("guided-backprop", 1, "mid", "layer2"),  # inside GuidedReLUMode, with every parameter frozen
    ("eigencam", 1, "start", "auto"),  # starting the auto-layer probe: hooks on every module
]


@pytest.mark.parametrize("parked,at,where,layer", PARKED, ids=[f"{p[0]}-{p[2]}" for p in PARKED])
def test_a_call_parked_mid_forward_does_not_disturb_other_calls(parked, at, where, layer):
    model = SmallResNet()
    refs = {(n, i): _run(model, n, _x(i), TARGETS[i]) for n in METHODS for i in range(3)}
    ref_parked = _run(model, parked, _x(9), camkit.TopK(2), layer)
    before = _state(model)
    core_probe.forget(model)  # so that layer="auto" probes again
    gate = model.gate
    t, box = _in_thread(lambda: (gate.park(at, where), _run(model, parked, _x(9), camkit.TopK(2), layer))[-1])
    try:
        assert gate.reached.wait(60), box.get("error")
        for (n, i), ref in refs.items():  # while the parked call holds hooks / replaced forwards / modes
            assert torch.equal(_run(model, n, _x(i), TARGETS[i]), ref), (n, i)
    finally:
        gate.release.set()
        t.join(60)
    assert "error" not in box, box.get("error")
    assert torch.equal(box["result"], ref_parked)
    assert _state(model) == before


def test_guided_relu_mode_is_per_thread():
    """Guided backprop's ReLU rule (a TorchFunctionMode) does not reach a plain gradient in another thread."""
    model = SmallResNet()
    x = _x(1)
    ref = camkit.GradCAM(model, "layer2").explain(x, camkit.TopK(3))
    plain_x = x.clone().requires_grad_(True)
    plain_ref = torch.autograd.grad(model(plain_x)[:, 3].sum(), plain_x)[0]
    gate = model.gate
    t, box = _in_thread(lambda: (gate.park(1, "mid"), camkit.GuidedBackprop(model)(x))[-1])
    try:
        assert gate.reached.wait(60)
        e = camkit.GradCAM(model, "layer2").explain(x, camkit.TopK(3))
        assert torch.equal(e.maps, ref.maps) and torch.equal(e.weights, ref.weights)
        xi = x.clone().requires_grad_(True)  # parameters are frozen by the parked call; the input gradient is not guided
        assert torch.equal(torch.autograd.grad(model(xi)[:, 3].sum(), xi)[0], plain_ref)
    finally:
        gate.release.set()
        t.join(60)
    assert "error" not in box and all(p.requires_grad for p in model.parameters())


# -- stress: N threads x every method x repeats ---------------------------------------------------------------

def test_threads_times_every_method_equal_sequential_results():
    model = SmallResNet()
    n_threads, repeats = 8, 2
    jobs = [(n, i) for n in METHODS for i in range(3)]
    refs = {(n, i): _run(model, n, _x(i), TARGETS[i]) for n, i in jobs}
    before = _state(model)
    live = {"now": 0, "max": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def worker(k: int):
        barrier.wait()
        out = []
        for r in range(repeats):
            for j in range(len(jobs)):
                n, i = jobs[(j + 5 * k + r) % len(jobs)]  # every thread its own order: methods mix
                with lock:
                    live["now"] += 1
                    live["max"] = max(live["max"], live["now"])
                try:
                    out.append(((n, i), _run(model, n, _x(i), TARGETS[i])))
                finally:
                    with lock:
                        live["now"] -= 1
        return out

    with _fast_switching():
        threads = [_in_thread(lambda k=k: worker(k)) for k in range(n_threads)]
        for t, _ in threads:
            t.join(300)
    assert live["max"] > 1  # calls did overlap
    for _, box in threads:
        assert "error" not in box, box.get("error")
        assert len(box["result"]) == repeats * len(jobs)
        for key, maps in box["result"]:
            assert torch.equal(maps, refs[key]), key
    assert _state(model) == before


def test_an_exception_in_one_thread_does_not_disturb_the_others():
    model = SmallResNet()
    methods = ["gradcam", "ablationcam", "scorecam", "eigencam", "guided-gradcam", "layercam"]
    refs = {n: _run(model, n, _x(1), camkit.TopK(2)) for n in methods}
    before = _state(model)

    def boom(_out):
        raise ValueError("boom")

    def failing(k: int):
        kind = k % 3
        if kind == 0:
            return _run(model, methods[k % len(methods)], _x(1), boom)  # after the forward, inside the guard
        if kind == 1:
            return _run(model, "gradcam", _x(1), None, layer="gate.missing")  # bad layer name
        return _run(model, "gradcam", _x(1), 10)  # class out of range

    def good(k: int):
        return [(n, _run(model, n, _x(1), camkit.TopK(2))) for n in methods[k % 2::2] for _ in range(2)]

    with _fast_switching():
        threads = [(k, *_in_thread(lambda k=k: failing(k) if k % 2 else good(k))) for k in range(8)]
        for _, t, _ in threads:
            t.join(300)
    for k, _, box in threads:
        if k % 2:
            assert isinstance(box.get("error"), (ValueError, camkit.CamkitError)), box
        else:
            assert "error" not in box, box.get("error")
            for n, maps in box["result"]:
                assert torch.equal(maps, refs[n]), n
    assert _state(model) == before


# -- the model-state guard under overlap ---------------------------------------------------------------------------

def test_state_restored_only_when_the_last_overlapping_call_ends():
    model = SmallResNet()
    model.train()
    model.layer1.bn1.eval()
    model.stem[0].weight.requires_grad_(False)
    marker = torch.full_like(model.fc.weight, 7.0)
    model.fc.weight.grad = marker
    user = model.fc.register_forward_hook(lambda m, i, o: seen.append(m.training))
    seen: list[bool] = []
    before = _state(model)
    gate = model.gate
    # thread A parks inside its forward; the main thread runs (and ends) several calls meanwhile
    t, box = _in_thread(lambda: (gate.park(1, "mid"), camkit.GradCAM(model, "layer2")(_x(1)))[-1])
    try:
        assert gate.reached.wait(60)
        for n in ("guided-backprop", "gradcam", "ablationcam"):
            _run(model, n, _x(2), None)
        assert not any(m.training for m in model.modules())  # still in eval: A is running
        assert not any(p.requires_grad for p in model.parameters())  # guided's freeze lasts until the last call ends
    finally:
        gate.release.set()
        t.join(60)
    assert "error" not in box
    assert seen and not any(seen)  # every forward of every call ran in eval mode
    assert _state(model) == before and model.fc.weight.grad is marker
    user.remove()


def test_calls_that_need_another_mode_wait_and_nested_ones_raise():
    model = SmallResNet()
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False  # training-mode BatchNorm without side effects on the buffers
    modes: list[tuple[str, bool]] = []
    model.fc.register_forward_hook(lambda m, i, o: modes.append((threading.current_thread().name, m.training)))
    gate = model.gate
    t, box = _in_thread(lambda: (gate.park(1, "mid"), camkit.GradCAM(model, "layer2", eval_mode=False)(_x(1)))[-1])
    assert gate.reached.wait(60)
    u, ubox = _in_thread(lambda: camkit.GradCAM(model, "layer2")(_x(1)))  # eval_mode=True must wait for t
    u.join(0.5)
    assert u.is_alive()
    gate.release.set()
    t.join(60)
    u.join(60)
    assert "error" not in box and "error" not in ubox
    assert [m for _, m in modes] == [True, False]  # the training-mode call ran first, then the eval one
    assert all(m.training for m in model.modules())

    def nested(out):  # inside an eval-mode call, a train-mode call on the same model cannot wait for itself
        camkit.GradCAM(model, "layer2", eval_mode=False)(_x(1))
        return out[:, :1]

    with pytest.raises(camkit.CamkitError, match="training mode|eval mode"):
        camkit.GradCAM(model, "layer2")(_x(1), targets=nested)
    assert all(m.training for m in model.modules())


def test_hooks_act_only_in_their_own_call():
    lin = nn.Linear(2, 2)
    seen = []
    other: dict = {}
    with core_hooks.Hooks() as h:
        h.on_forward(lin, lambda m, i, o: seen.append("mine"))
        h.replace_forward(lin, lambda orig, x: orig(x) * 0)
        assert torch.equal(lin(torch.ones(1, 2)), torch.zeros(1, 2))
        t, other = _in_thread(lambda: lin(torch.ones(1, 2)))
        t.join(10)
    assert seen == ["mine"]  # the other thread's forward was not seen, nor replaced
    assert not torch.equal(other["result"], torch.zeros(1, 2))
    assert "forward" not in lin.__dict__ and not lin._forward_hooks
