"""``viz.show`` names the classes without being told: an explanation carries its model's class names
(``categories``), and ``show`` uses them when ``labels`` is not given."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

import camkit
from camkit import viz


def _pixels(picture) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.int16)


def test_show_titles_use_the_models_class_names():
    model = camkit.models.load("digits_resnet")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    e = camkit.GradCAM(model).explain(x, targets=camkit.TopK(2))
    assert e.categories == list(model.categories)
    named = _pixels(viz.show(e, x, cell=96))
    np.testing.assert_array_equal(named, _pixels(viz.show(e, x, labels=model.categories, cell=96)))
    indices = _pixels(viz.show(dataclasses.replace(e, categories=None), x, cell=96))  # "class 7" titles
    assert named.shape == indices.shape and (named != indices).any()
    np.testing.assert_array_equal(indices, _pixels(viz.show(e, x, labels=lambda c: f"class {c}", cell=96)))
    mixed = _pixels(viz.show({"a": dataclasses.replace(e, categories=None), "b": e}, x, cell=96))
    np.testing.assert_array_equal(mixed, _pixels(viz.show({"a": e, "b": e}, x, labels=model.categories, cell=96)))


def test_every_method_records_the_names_and_none_without_them():
    model = camkit.models.load("digits_resnet")
    x = torch.rand(1, 3, 64, 64)
    for name in ("gradcam", "guided-backprop", "guided-gradcam", "eigencam"):
        assert camkit.create(name, model).explain(x).categories == list(model.categories), name
    assert camkit.GradCAM(model, aug_smooth=True).explain(x).categories == list(model.categories)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    assert camkit.GradCAM(plain, layer="1").explain(x).categories is None
