"""The silent cases of issue 13 now give a correct result or a clear error: several candidate score
tensors in a tuple, per-image target callables, random weights, 0..255 input to a zoo model, the
run description's counts."""
from __future__ import annotations

import warnings

import pytest
import torch

import camkit
from camkit.bench.report import run_counts
from camkit.bench.sources import model_label, random_weights
from camkit.core.outputs import probe_score, to_logits
from toy_models import FunctionalNet, GapNet


class BoxesAndLogits(GapNet):
    """A detector-like head: ``(boxes (B, 4), logits (B, 5))``."""

    def forward(self, x):
        logits = super().forward(x)
        return logits[:, :4].tanh() * 10, logits


def _x(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def test_two_candidate_score_tensors_are_an_error_not_the_box_coordinates():
    model = BoxesAndLogits().double()
    with pytest.raises(camkit.TargetError, match=r"2 of them could be class scores.*targets=callable"):
        camkit.GradCAM(model, layer="feat")(_x())
    with pytest.raises(camkit.TargetError, match="could be class scores"):
        camkit.GradCAM(model, layer="feat")(_x(), targets=camkit.TopK(2))
    # a callable says which numbers to explain; it equals explaining a model that returns the logits
    fixed = camkit.GradCAM(model, layer="feat")(_x(), targets=lambda out: out[1][:, 3])
    plain = camkit.GradCAM(GapNet().double(), layer="feat")(_x(), targets=3)
    torch.testing.assert_close(fixed, plain)


def test_outputs_with_exactly_one_score_tensor_still_work():
    x = torch.rand(2, 3, 6, 6)
    net = FunctionalNet("tuple")  # (logits (B, 3), features (B, 5, h, w))
    assert to_logits(net(x)).shape == (2, 3)
    assert to_logits({"scores": torch.zeros(2, 7), "features": torch.zeros(2, 4, 3, 3)}).shape == (2, 7)
    # a (B, N) tensor and a tensor with another batch size: the batch decides
    assert to_logits((torch.zeros(5, 4), torch.zeros(2, 9)), batch=2).shape == (2, 9)
    with pytest.raises(camkit.TargetError, match="could be class scores"):
        to_logits([torch.zeros(2, 4), torch.zeros(2, 9)])
    # probing which layers an output depends on needs no choice: every floating tensor counts
    assert float(probe_score((torch.tensor([[1.0, 5.0]]), {"a": torch.tensor([2.0]), "i": torch.tensor([9])}))) == 7.0


@pytest.mark.parametrize("name", ["gradcam", "smoothgradcam++", "scorecam", "ablationcam", "fullgrad",
                                  "guided-backprop"])
def test_per_image_callables_equal_the_same_class_indices(name, one_thread):
    model = GapNet().double()
    x = _x(3)
    classes = [2, 0, 4]
    fns = [lambda row, c=c: row[c] for c in classes]  # pytorch-grad-cam style: one image's output row
    layer = "auto" if name == "fullgrad" else "feat"
    kw = {"score": "logit"} if name == "scorecam" else {}  # a callable's score is used as is, like a logit
    by_fn = camkit.create(name, model, layer=layer, **kw).explain(x, targets=fns)
    by_idx = camkit.create(name, model, layer=layer, **kw).explain(x, targets=classes)
    torch.testing.assert_close(by_fn.maps, by_idx.maps, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(by_fn.scores.double(), by_idx.scores.double())


def test_per_image_callables_on_a_tuple_output_and_their_errors():
    model = BoxesAndLogits().double()
    fns = [lambda out: out[1][3], lambda out: out[1][0]]  # each gets (boxes[i], logits[i])
    got = camkit.GradCAM(model, layer="feat")(_x(), targets=fns)
    want = camkit.GradCAM(GapNet().double(), layer="feat")(_x(), targets=[3, 0])
    torch.testing.assert_close(got, want)
    with pytest.raises(camkit.TargetError, match="3 target callables for a batch of 2"):
        camkit.GradCAM(model, layer="feat")(_x(), targets=fns + fns[:1])
    with pytest.raises(camkit.TargetError, match="mixes callables"):
        camkit.GradCAM(model, layer="feat")(_x(), targets=[fns[0], 1])


def test_zoo_model_warns_once_on_pixels_outside_unit_range():
    model = camkit.models.wrap(GapNet(), default_layer="feat", input_size=(8, 8))
    x = torch.rand(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)  # in range: silent
        camkit.SmoothGradCAMPlusPlus(model, layer="feat", n=2, noise=1.0)(x)  # its own noise: silent
    with pytest.warns(UserWarning, match=r"0\.\.255 pixel values: pass x / 255"):
        model(x * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x * 255)  # once per model
    other = camkit.models.wrap(GapNet(), default_layer="feat", input_size=(8, 8))
    with pytest.warns(UserWarning, match="already normalised"):
        other((x - 0.45) / 0.22)


def test_random_weights_are_named_and_runs_are_counted_by_kind():
    assert random_weights("resnet50") and random_weights("digits_resnet=random")
    assert not random_weights("digits_resnet") and not random_weights("resnet50=imagenet")
    assert model_label("resnet50") == "resnet50 (random)"
    assert run_counts(["gradcam", "layercam", "scorecam", "baseline:uniform", "baseline:center_gaussian",
                       "baseline:random"]) == "3 methods and 3 baselines"
    assert run_counts(["gradcam"]) == "1 method"


def test_cli_explain_warns_on_random_weights(tmp_path, capsys):
    from camkit import viz
    from camkit.cli import main

    path = tmp_path / "img.png"
    viz.to_pil(torch.rand(3, 40, 30)).save(path)
    n = torch.get_num_threads()
    try:
        assert main(["explain", str(path), "--model", "digits_resnet", "--weights", "random", "--method", "gradcam",
                     "--threads", "1", "-o", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    assert "warning: digits_resnet runs with random weights" in err
