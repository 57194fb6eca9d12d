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
