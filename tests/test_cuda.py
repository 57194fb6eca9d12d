"""On a CUDA device: every method, TopK, the guided methods, Ablation-CAM's replay and closed form,
Score-CAM's bounded memory, precision / channels-last and ``camkit bench --device cuda``.

Marked ``cuda`` and skipped without a GPU. ``CAMKIT_TEST_DEVICE=cpu`` runs the same tests on the CPU
(all but the memory-bound one), to check the tests themselves on a machine without a GPU.
"""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch
import torchvision
from torch import nn

import camkit
from camkit.core import engine
from toy_models import GapNet

DEV = torch.device(os.environ.get("CAMKIT_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEV.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("one_thread", "exact_float32"),
]
METHODS = [m for m in camkit.list_methods() if not camkit.methods.get(m).requires]  # LeGrad: on a ViT below


@pytest.fixture
def exact_float32():
    """No TF32 in matrix products and convolutions, so results can be compared with the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _net() -> nn.Module:
    return GapNet(c=8, n_cls=6, deep_tail=True, seed=3).eval()


def _x(b: int = 2, size: int = 24) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0))


def _layer(name: str) -> str:
    return "mid" if name == "cam" else "feat"


@pytest.mark.parametrize("name", METHODS)
def test_every_method_on_the_device_equals_the_cpu(name):
    model, x = _net(), _x()
    concepts = camkit.methods.get(name).output == "concepts"  # DFF: k=5 concept maps, no targets
    targets = None if concepts else camkit.TopK(2)
    ref = camkit.create(name, model, layer=_layer(name)).explain(x, targets)
    model.to(DEV)
    e = camkit.create(name, model, layer=_layer(name)).explain(x.to(DEV), targets)
    guided = e.output == "attribution"
    assert e.maps.device.type == DEV.type and e.maps.dtype == torch.float32
    assert e.maps.shape == ((2, 2, 3, 24, 24) if guided else (2, 5, 24, 24) if concepts else (2, 2, 24, 24))
    assert (concepts and e.targets is None) or torch.equal(e.targets.cpu(), ref.targets)
    if name == "smoothgradcam++":  # its noise comes from a generator on the input's device
        again = camkit.create(name, model, layer="feat").explain(x.to(DEV), camkit.TopK(2))
        torch.testing.assert_close(e.maps, again.maps)
        return
    scale = ref.maps.abs().max()
    torch.testing.assert_close(e.maps.cpu(), ref.maps, rtol=1e-3, atol=1e-4 * float(scale))


def test_bottomk_and_list_targets_on_the_device():
    model, x = _net().to(DEV), _x().to(DEV)
    cam = camkit.GradCAM(model, layer="feat")
    low = cam.explain(x, camkit.BottomK(3))
    assert low.maps.shape == (2, 3, 24, 24)
    assert torch.equal(low.targets, low.logits.topk(3, 1, largest=False).indices)
    one = cam.explain(x, targets=[4, 5])
    torch.testing.assert_close(one.scores, low.logits[[0, 1], [4, 5]])


LOG = "camkit.methods.ablation.closed_form"


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_ablation_closed_form_and_replay_on_the_device(model_name, caplog):
    """ResNet's head is affine in layer4 (closed form); VGG's classifier is not (replay). Both equal
    the replay, on the device, and the CPU."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)().eval()
    layer = "layer4" if model_name == "resnet18" else "features.18"
    x = _x(2, 64)
    cpu = camkit.AblationCAM(model, layer, closed_form=False).explain(x, camkit.TopK(2))
    model.to(DEV)
    with caplog.at_level(logging.DEBUG, logger=LOG):
        closed = camkit.AblationCAM(model, layer).explain(x.to(DEV), camkit.TopK(2))
    replay = camkit.AblationCAM(model, layer, closed_form=False).explain(x.to(DEV), camkit.TopK(2))
    used = any("closed form (the tail" in r.getMessage() for r in caplog.records)
    assert used is (model_name == "resnet18")
    scale = float(cpu.weights.abs().max())
    torch.testing.assert_close(closed.weights.cpu(), replay.weights.cpu(), rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(replay.weights.cpu(), cpu.weights, rtol=1e-3, atol=1e-4 * scale)


class WideNet(nn.Module):
    """A 64-channel stem then ``feat`` with C channels at full resolution, GAP, fc."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(64, c, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(self.stem(x)).mean((2, 3)))


def _peak(fn) -> int:
    """Bytes allocated at the peak of ``fn()`` above what was allocated before it."""
    torch.cuda.synchronize(DEV)
    torch.cuda.reset_peak_memory_stats(DEV)
    base = torch.cuda.memory_allocated(DEV)
    fn()
    torch.cuda.synchronize(DEV)
    return torch.cuda.max_memory_allocated(DEV) - base


def test_scorecam_memory_is_bounded_by_its_batch_size():
    """Peak memory <= the explained pass + one chunk: a no-grad forward of ``batch_size`` masked
    inputs, their masks and the masked inputs themselves -- far below all C masked inputs at once."""
    if DEV.type != "cuda":
        pytest.skip("memory statistics need a CUDA device")
    c, size, bs, b = 256, 96, 8, 2
    model = WideNet(c).to(DEV).eval()
    x = torch.rand(b, 3, size, size, device=DEV)
    chunk_in = torch.rand(bs, 3, size, size, device=DEV)
    layer = [model.feat]
    with torch.no_grad():
        model(x)  # cuDNN / allocator warm-up
        forward_chunk = _peak(lambda: model(chunk_in))
    main = _peak(lambda: engine.forward(model, x, layer, ["feat"], record=False))
    del chunk_in
    cam = camkit.ScoreCAM(model, "feat", batch_size=bs)
    cam(x)  # warm-up
    peak = _peak(lambda: cam(x))
    pixels = size * size * 4  # bytes of one float32 plane
    # per chunk, besides the forward: channel maps, masks, gathered and masked inputs (1 + 1 + 3 + 3 planes)
    bound = int((main + forward_chunk + 8 * bs * pixels) * 1.10) + (1 << 20)
    assert peak <= bound, f"Score-CAM peak {peak / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert peak < forward_chunk * (c * b // bs) / 8  # all C x B masked inputs in one pass would need ~64x


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_precision_and_channels_last_on_the_device(precision):
    if DEV.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    if DEV.type == "cpu" and precision == "fp16":
        pytest.skip("fp16 is refused on CPUs without AMX-FP16")
    model, x = _net().to(DEV), _x().to(DEV)
    ptrs = [(p.data_ptr(), p.stride()) for p in model.parameters()]
    ref = camkit.GradCAM(model, layer="feat").explain(x, camkit.TopK(2))
    for name in ("gradcam", "ablationcam", "scorecam", "guided-gradcam"):
        e = camkit.create(name, model, layer="feat", precision=precision, channels_last=True).explain(x, camkit.TopK(2))
        assert e.maps.dtype == torch.float32 and torch.isfinite(e.maps).all()
        if name == "gradcam":
            a, r = e.maps.flatten(2), ref.maps.flatten(2)
            corr = torch.nn.functional.cosine_similarity(a - a.mean(-1, keepdim=True), r - r.mean(-1, keepdim=True), -1)
            assert (corr > 0.95).all()
    assert [(p.data_ptr(), p.stride()) for p in model.parameters()] == ptrs


def test_bench_on_the_device(tmp_path):
    from camkit.cli import main

    out = tmp_path / "run"
    assert main(["bench", "--models", "digits_resnet", "--methods", "gradcam,ablationcam,scorecam", "--data",
                 "digits:4", "--steps", "2", "--batch-size", "4", "--threads", "1", "-q", "--device", str(DEV),
                 "-o", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["type"] == "error"]
    maps = [r for r in records if r["type"] == "map"]
    assert {r["method"] for r in maps} >= {"gradcam", "ablationcam", "scorecam"}
    assert all(r["iou"] is None or 0 <= r["iou"] <= 1 for r in maps)
    assert (out / "table.md").is_file() and (out / "report.html").is_file()
