"""Inputs that used to give a silent wrong map or a raw PyTorch error: NaN / inf pixels, an input
dtype other than the model's, a target layer whose gradient is exactly zero (issue 22)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import camkit
from camkit.errors import InputError, ZeroGradientWarning
from toy_models import GapNet


@pytest.fixture(scope="module")
def model():
    return GapNet().eval()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_nan_or_inf_in_the_input_is_a_camkit_error(model, method, bad):
    x = torch.rand(2, 3, 16, 16)
    x[1, 0, 3, 4] = bad
    with pytest.raises(InputError, match=r"1 infinite|1 NaN") as info:
        camkit.create(method, model, layer="feat")(x)
    assert "image(s) [1]" in str(info.value) and "nan_to_num" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_another_float_dtype_is_cast_to_the_models_with_a_warning(model, dtype):
    x = torch.rand(2, 3, 16, 16).to(dtype)
    with pytest.warns(UserWarning, match=rf"input is {dtype} but the model's parameters are torch.float32: the input "
                                         r"was cast to torch.float32 \(pass x.to\(torch.float32\)"):
        maps = camkit.GradCAM(model, layer="feat")(x)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, camkit.GradCAM(model, layer="feat")(x.float()), rtol=0, atol=0)


def test_matching_dtype_gives_no_warning(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        camkit.GradCAM(model.double(), layer="feat")(torch.rand(1, 3, 16, 16, dtype=torch.float64))
        camkit.GradCAM(model.float(), layer="feat")(torch.rand(1, 3, 16, 16))


class DeadTail(GapNet):
    """The head sees ``relu(A - threshold)``: zero wherever A is below it, so dS/dA is exactly 0 there."""

    threshold = 1e6

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(a - self.threshold)).flatten(1))


def test_a_zero_gradient_at_the_layer_warns_that_the_map_is_blank():
    x = torch.rand(2, 3, 16, 16)
    with pytest.warns(ZeroGradientWarning, match=r"layer 'feat' is exactly zero for 2 of 2 .* maps are blank.*"
                                                 r"later layer .*'scorecam'") as rec:
        maps = camkit.GradCAM(DeadTail().eval(), layer="feat")(x)
    assert len([w for w in rec if w.category is ZeroGradientWarning]) == 1
    assert torch.count_nonzero(maps) == 0  # what the warning is about
    gated = DeadTail().eval()
    gated.threshold = 50.0  # image 0 stays below it, image 1 (pixels x 1000) goes above
    with pytest.warns(ZeroGradientWarning, match="for 1 of 2"):
        maps = camkit.GradCAM(gated, layer="feat")(x * torch.tensor([1.0, 1000.0]).view(2, 1, 1, 1))
    assert torch.count_nonzero(maps[0]) == 0 and torch.count_nonzero(maps[1]) > 0


def test_no_zero_gradient_warning_on_a_live_layer(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradientWarning)
        camkit.GradCAM(model, layer="feat")(torch.rand(2, 3, 16, 16))
