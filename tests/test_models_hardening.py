"""Model files and model objects people bring: a malicious pickle in a Hugging Face directory or a
weights file (refused with a camkit error, its payload never run), and wrapped models (issue 22)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from camkit.errors import UnsupportedModelError


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_hugging_face_pickle_is_a_camkit_error_and_never_runs(tmp_path):
    transformers = pytest.importorskip("transformers")
    from camkit.models.hf_loader import load_hf

    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=16, num_labels=3)
    folder = tmp_path / "evil-vit"
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()  # only the pickle is left
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({**state, "classifier.weight": Payload(marker)}, folder / "pytorch_model.bin")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                                 "size": {"height": 16, "width": 16}}))
    with pytest.raises(UnsupportedModelError) as info:
        load_hf(str(folder))
    text = str(info.value)
    assert str(folder / "pytorch_model.bin") in text and "safetensors" in text and "posix.mkdir" in text, text
    assert not marker.exists()


def test_malicious_weights_file_is_a_camkit_error_and_never_runs(tmp_path):
    from camkit.models.state import read_state_dict

    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": Payload(marker)}, path)
    with pytest.raises(UnsupportedModelError, match=r"weights\.pth.*imports posix\.mkdir.*\.safetensors"):
        read_state_dict(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ wrapped models

import warnings  # noqa: E402

import camkit  # noqa: E402
from torch import nn  # noqa: E402
from toy_models import GapNet  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return GapNet().eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _same_as_unwrapped(wrapper: nn.Module, inner: nn.Module, x: torch.Tensor, prefix: str) -> None:
    for method in ("gradcam", "scorecam"):
        ref = camkit.create(method, inner, layer="feat").explain(x)
        for layer in ("feat", prefix + "feat", "auto", [prefix + "feat"]):
            e = camkit.create(method, wrapper, layer=layer).explain(x)
            assert e.layers == ["feat"], (method, layer, e.layers)
            torch.testing.assert_close(e.maps, ref.maps, rtol=0, atol=0)


def test_torch_compile_is_explained_through_orig_mod_with_or_without_the_prefix(net, x):
    compiled = torch.compile(net)
    assert type(compiled).__name__ == "OptimizedModule"
    _same_as_unwrapped(compiled, net, x, "_orig_mod.")


def test_data_parallel_is_explained_through_its_module_and_left_as_found(net, x):
    dp = nn.DataParallel(net)
    dp.train()  # the wrapper's flags are the user's: left as found
    _same_as_unwrapped(dp, net, x, "module.")
    assert dp.training and net.training
    net.eval()


def test_distributed_data_parallel_with_a_single_process_gloo_group(net, x, tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(GapNet().eval())
        _same_as_unwrapped(ddp, ddp.module, x, "module.")
        twice = torch.compile(nn.DataParallel(net))  # wrappers nest: both prefixes peel off
        e = camkit.GradCAM(twice, layer="_orig_mod.module.feat").explain(x)
        assert e.layers == ["feat"]
    finally:
        dist.destroy_process_group()


def test_dynamically_quantised_model_refused_for_gradients_explained_without(net, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        q = torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    for method in ("gradcam", "layercam", "fullgrad"):
        with pytest.raises(UnsupportedModelError, match=r"quantised layers \['fc \(DynamicQuantizedLinear\)'\] have "
                                                        r"none.*float model before quantising.*'scorecam'"):
            camkit.create(method, q, layer="feat")
    with pytest.raises(UnsupportedModelError, match="gradients to choose layer='auto'"):
        camkit.ScoreCAM(q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = camkit.ScoreCAM(q, layer="feat")(x)
    ref = camkit.ScoreCAM(net, layer="feat")(x)  # the float model: equal up to the int8 head's error
    assert (maps - ref).abs().max() < 0.05
