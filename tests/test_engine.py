"""The shared engine: targets, layers, bad input, model state, autograd scope, output types, ViT grids."""
from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

import camkit
from camkit.layers.layout import readings
from toy_models import FunctionalNet, GapNet, TinyViT

GRADIENT_METHODS = ["gradcam", "gradcam++", "smoothgradcam++", "xgradcam", "layercam", "hirescam"]


def _x(b=2, s=8):
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(0))


class CountForward:
    def __init__(self, module: nn.Module) -> None:
        self.n = 0
        self.h = module.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.n += 1


# -- targets ------------------------------------------------------------------------------------
def test_default_target_is_top1_and_topk_uses_one_forward():
    model = GapNet()
    x = _x()
    logits = model(x)
    cam = camkit.GradCAM(model, layer="feat")
    e = cam.explain(x)
    assert e.targets.tolist() == logits.argmax(1).tolist()
    counter = CountForward(model)
    e5 = cam.explain(x, targets=camkit.TopK(3))
    counter.h.remove()
    assert counter.n == 1
    assert e5.maps.shape == (2, 3, 8, 8)
    assert e5.targets.tolist() == logits.topk(3, 1).indices.tolist()
    # each of the k maps equals the single-class map for that class
    for k in range(3):
        single = cam(x, targets=e5.targets[:, k].tolist())
        torch.testing.assert_close(e5.maps[:, k], single, atol=1e-6, rtol=0)


def test_bottomk_picks_the_least_predicted_classes():
    model = GapNet()
    x = _x()
    e = camkit.GradCAM(model, layer="feat").explain(x, targets=camkit.BottomK(2))
    assert e.targets.tolist() == model(x).topk(2, 1, largest=False).indices.tolist()


def test_callable_target_explains_any_scalar_output():
    model = GapNet()
    x = _x()
    e_fn = camkit.GradCAM(model, layer="feat").explain(x, targets=lambda out: out[:, 2] - out[:, 0])
    a = camkit.GradCAM(model, layer="feat").explain(x, targets=2)
    b = camkit.GradCAM(model, layer="feat").explain(x, targets=0)
    torch.testing.assert_close(e_fn.weights, a.weights - b.weights, atol=1e-6, rtol=1e-5)
    assert e_fn.targets is None


@pytest.mark.parametrize("targets, msg", [
    ([1, 2, 3], "3 targets for a batch of 2"),
    (7, "out of range"),
    ([0, -1], "out of range"),
    ([0.5, 1.0], "int class indices"),
    (camkit.TopK(9), "more classes than the model has"),
])
def test_bad_targets_raise_target_error(targets, msg):
    with pytest.raises(camkit.TargetError, match=msg):
        camkit.GradCAM(GapNet(), layer="feat")(_x(), targets=targets)


# -- bad input ------------------------------------------------------------------------------------
def test_unknown_layer_lists_close_matches():
    with pytest.raises(camkit.LayerNotFoundError, match="'feat.0'"):
        camkit.GradCAM(GapNet(), layer="feat.O")(_x())


@pytest.mark.parametrize("x, msg", [
    (torch.rand(3, 8, 8), "unsqueeze"),
    (torch.rand(2, 1, 8, 8), "expects 3 channels"),
    (torch.randint(0, 255, (2, 3, 8, 8)), "floating-point"),
    ("not a tensor", "torch.Tensor"),
])
def test_bad_input_raises_input_error(x, msg):
    with pytest.raises(camkit.InputError, match=msg):
        camkit.GradCAM(GapNet(), layer="feat")(x)


def test_output_without_gradient_raises():
    class Detached(GapNet):
        def forward(self, x):
            return super().forward(x).detach()

    with pytest.raises(camkit.NoGradientError, match="do not depend"):
        camkit.GradCAM(Detached(), layer="feat")(_x())


def test_unknown_method_name_suggests():
    with pytest.raises(camkit.CamkitError, match="gradcam"):
        camkit.create("gradcamm", GapNet())
    assert type(camkit.create("Grad-CAM++", GapNet())) is camkit.GradCAMPlusPlus


# -- autograd scope and model state ------------------------------------------------------------------
def test_autograd_only_after_target_and_no_parameter_grads():
    model = GapNet(deep_tail=True)
    seen = {}
    model.stem.register_forward_hook(lambda *a: seen.update(stem=torch.is_grad_enabled()))
    model.mid.register_forward_hook(lambda *a: seen.update(mid=torch.is_grad_enabled()))
    camkit.GradCAM(model, layer="feat")(_x())
    assert seen == {"stem": False, "mid": True}
    assert all(p.grad is None for p in model.parameters())


def test_model_state_restored_also_after_an_exception():
    model = GapNet()
    model.train()
    model.stem[0].weight.requires_grad_(False)
    marker = torch.full_like(model.fc.weight, 7.0)
    model.fc.weight.grad = marker
    user_hook = model.feat.register_forward_hook(lambda *a: None)
    during = []
    model.fc.register_forward_hook(lambda m, i, o: during.append(m.training))
    n_hooks = {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()}

    def check():
        assert all(m.training for m in model.modules())
        assert model.stem[0].weight.requires_grad is False and model.fc.weight.requires_grad is True
        assert model.fc.weight.grad is marker and (marker == 7).all()
        assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
        assert {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()} == n_hooks

    for name in GRADIENT_METHODS + ["cam"]:
        camkit.create(name, model, layer="feat", **({"n": 2} if name == "smoothgradcam++" else {}))(_x())
        check()
    assert during and not any(during)  # explained in eval mode
    with pytest.raises(camkit.TargetError):
        camkit.GradCAM(model, layer="feat")(_x(), targets=[1])
    check()

    class Boom(Exception):
        pass

    def boom(*_):
        raise Boom

    h = model.mid.register_forward_hook(boom)
    n_hooks["mid"] += 1
    with pytest.raises(Boom):
        camkit.GradCAM(model, layer="feat")(_x())
    check()
    h.remove()
    user_hook.remove()


def test_works_under_no_grad_and_refuses_inference_mode_clearly():
    model = GapNet()
    x = _x()
    ref = camkit.GradCAM(model, layer="feat")(x)
    with torch.no_grad():
        torch.testing.assert_close(camkit.GradCAM(model, layer="feat")(x), ref)
    assert torch.is_grad_enabled()
    with torch.inference_mode():
        xi = x.clone()
        with pytest.raises(camkit.CamkitError, match="inference_mode"):
            camkit.GradCAM(model, layer="feat")(x)
    torch.testing.assert_close(camkit.GradCAM(model, layer="feat")(xi), ref)  # inference tensor, outside the mode


def test_no_memory_growth_over_200_calls():
    model = GapNet()
    x = _x()
    cam = camkit.GradCAMPlusPlus(model, layer="feat")

    def live_tensors():
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for _ in range(5):
        cam(x)
    before = live_tensors()
    for _ in range(200):
        cam(x, targets=camkit.TopK(2))
    assert live_tensors() <= before


def test_in_place_ops_after_the_target_do_not_corrupt_activations():
    class InPlace(GapNet):
        def forward(self, x):
            a = self.feat(self.stem(x))
            a += 1.0  # in place on the target's output
            return self.fc(a.mean((2, 3)))

    model = InPlace()
    x = _x()
    e = camkit.GradCAM(model, layer="feat").explain(x, targets=1)
    a = model.feat(model.stem(x)).detach()
    w = model.fc.weight.detach()[1] / a[0, 0].numel()
    torch.testing.assert_close(e.weights, w.expand(2, -1))
    torch.testing.assert_close(e.raw, torch.relu(torch.einsum("c,bchw->bhw", w, a)))


# -- output types and layers ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tensor", "dict", "tuple", "object"])
def test_model_outputs_tuple_dict_or_logits_attribute(kind):
    x = _x()
    torch.manual_seed(0)
    ref = camkit.GradCAM(FunctionalNet("tensor"), layer="feat")(x)
    torch.manual_seed(0)
    got = camkit.GradCAM(FunctionalNet(kind), layer="feat")(x)
    torch.testing.assert_close(got, ref)


def test_layer_as_module_and_auto():
    model = GapNet(deep_tail=True)
    x = _x()
    by_module = camkit.GradCAM(model, layer=model.mid).explain(x)
    by_name = camkit.GradCAM(model, layer="mid").explain(x)
    auto = camkit.GradCAM(model).explain(x)
    assert by_module.layers == ["mid"] and auto.layers == ["mid"]
    torch.testing.assert_close(auto.maps, by_name.maps)


@pytest.mark.parametrize("prefix, seq_first", [(1, False), (5, False), (1, True)])
def test_vit_tokens_become_a_grid_with_inferred_prefix(prefix, seq_first):
    torch.manual_seed(0)
    model = TinyViT(prefix=prefix, seq_first=seq_first)
    x = torch.rand(2, 3, 16, 24)
    e = camkit.GradCAM(model).explain(x, targets=camkit.TopK(2))
    assert e.layers == ["blocks.1.norm1"]
    assert e.raw.shape == (2, 2, 4, 6) and e.maps.shape == (2, 2, 16, 24)
    # reference: gradient of the class score w.r.t. the patch tokens of the last block's norm1
    out = {}
    h = model.blocks[1].norm1.register_forward_hook(lambda m, i, o: out.update(t=o))
    model.eval()
    logits = model(x)
    h.remove()
    t = out["t"]
    s = logits.gather(1, e.targets[:, :1]).sum()
    (g,) = torch.autograd.grad(s, t)
    if seq_first:
        t, g = t.transpose(0, 1), g.transpose(0, 1)
    grid = lambda v: v[:, prefix:].reshape(2, 4, 6, -1).permute(0, 3, 1, 2)
    w = grid(g).mean((2, 3))
    torch.testing.assert_close(e.weights[:, 0], w, atol=1e-5, rtol=1e-4)
    ref = torch.relu(torch.einsum("bc,bchw->bhw", w, grid(t.detach())))
    torch.testing.assert_close(e.raw[:, 0], ref, atol=1e-5, rtol=1e-4)


def test_token_grid_inference_without_patch_size():
    t = torch.zeros(2, 1 + 4 + 12, 8)  # 1 class + 4 register tokens, 3x4 grid, input 30x40
    grid = readings(t, 2, (30, 40), None)[0]
    assert (grid.kind, grid.prefix, grid.h, grid.w) == ("tokens", 5, 3, 4)


def test_auto_layer_uses_the_models_default_layer_attribute():
    model = GapNet(deep_tail=True)
    model.default_layer = "feat"
    assert camkit.GradCAM(model).explain(_x()).layers == ["feat"]


def test_b_by_k_target_tensor_gives_k_maps_from_one_forward():
    model = GapNet()
    x = _x()
    cam = camkit.GradCAM(model, layer="feat")
    idx = torch.tensor([[0, 4], [3, 1]])
    e = cam.explain(x, targets=idx)
    assert e.maps.shape == (2, 2, 8, 8) and e.targets.tolist() == idx.tolist()
    torch.testing.assert_close(e.maps[:, 1], cam(x, targets=[4, 1]), atol=1e-6, rtol=0)
