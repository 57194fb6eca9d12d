"""Segmentation and detection: targets, keyed layers, the input frame of detectors, methods, metrics.

Every map is compared with a Grad-CAM (or Ablation-/Score-CAM) computed here by hand: a plain
forward hook on the same layer, the same score computed from the output, torch.autograd.grad.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import detection as tvd
from torchvision.models import segmentation as tvs

import camkit
from camkit.core.region import InputRegion, input_region
from camkit.core.keys import replace, select, split_key
from camkit.layers.presets import model_task, task_layer
from camkit.errors import InputError, LayerNotFoundError, TargetError, UnsupportedModelError
from camkit.metrics import energy_pointing_game, localization_iou, mask_energy, mask_pointing_game, pointing_game
from camkit.targets import Detection, Segmentation
from task_models import KeyedNet, ToySeg, tiny_detector

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ helpers


def hand_gradcam(model, layer, x, score_fn, key=None):
    """raw map (B, h, w), weights (B, C) and score of Grad-CAM computed with plain autograd."""
    store = {}
    h = layer.register_forward_hook(lambda _m, _i, o: store.update(a=o if key is None else o[key]))
    try:
        with torch.enable_grad():
            out = model(x)
            s = score_fn(out)
            (g,) = torch.autograd.grad(s, store["a"])
    finally:
        h.remove()
    a = store["a"].detach()
    w = g.mean((2, 3))
    return torch.relu((w[:, :, None, None] * a).sum(1)), w, s.detach()


def norm(m):
    lo, hi = m.amin((-2, -1), keepdim=True), m.amax((-2, -1), keepdim=True)
    return (m - lo) / (hi - lo)


def padded_map(raw, padded, size):
    """By hand: upsample the grid map to the padded image, cut the padding (bottom/right), normalise."""
    up = F.interpolate(raw[:, None], size=padded, mode="bilinear", align_corners=False)[:, 0]
    return norm(up[:, : size[0], : size[1]])


def matched_score(out, box, label, iou=0.5):
    """The score of the prediction of ``label`` with the highest IoU >= iou with ``box``, by hand."""
    p = out[0]
    best, score = -1.0, p["scores"].sum() * 0
    for b, lab, s in zip(p["boxes"].detach(), p["labels"], p["scores"]):
        if int(lab) != int(label):
            continue
        ix = (min(b[2], box[2]) - max(b[0], box[0])).clamp(min=0) * (min(b[3], box[3]) - max(b[1], box[1])).clamp(min=0)
        u = (b[2] - b[0]) * (b[3] - b[1]) + (box[2] - box[0]) * (box[3] - box[1]) - ix
        if float(ix / u) > best:
            best, hit = float(ix / u), s
    return hit if best >= iou else score


@pytest.fixture(scope="module")
def tiny():
    return tiny_detector()


def assert_rel(a, b, rel=1e-4):
    """``a == b`` up to ``rel`` of b's largest magnitude (randomly initialised detectors have tiny gradients)."""
    scale = b.abs().max()
    assert scale > 0
    torch.testing.assert_close(a / scale, b / scale, rtol=rel, atol=rel)


@pytest.fixture(scope="module")
def frcnn():
    """Randomly initialised MobileNetV3 activations shrink ~10x per stage (1e-8 at the last): BatchNorm
    statistics are set from random images, as training would, and the class logits scaled down so that
    the softmax scores do not saturate."""
    torch.manual_seed(0)
    net = tvd.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=4, box_score_thresh=0.0, box_detections_per_img=4,
        min_size=160, max_size=320, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30).eval()
    trunk = net.backbone.body
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = the batch's
    trunk.train()
    with torch.no_grad():
        trunk(net.transform(torch.rand(4, 3, 160, 200, generator=torch.Generator().manual_seed(9)))[0].tensors)
        net.roi_heads.box_predictor.cls_score.weight.mul_(0.01)
    trunk.eval()
    return net


@pytest.fixture(scope="module")
def retina():
    torch.manual_seed(0)
    return tvd.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0,
                                      detections_per_img=4, topk_candidates=40, min_size=96, max_size=160).eval()


# ------------------------------------------------------------------------------------------ detection


def test_detector_scores_are_differentiable_in_eval_mode(frcnn):
    store = {}
    h = frcnn.backbone.body.register_forward_hook(lambda _m, _i, o: store.update(o))
    try:
        with torch.enable_grad():
            out = frcnn(torch.rand(1, 3, 160, 200))
    finally:
        h.remove()
    assert not frcnn.training and out[0]["scores"].requires_grad
    (g,) = torch.autograd.grad(out[0]["scores"][0], store["1"])
    assert g.abs().sum() > 0
    # and through camkit: its Detection target's scores reach the layer (a detached score would give no
    # gradient: NoGradientError), with the gradient plain autograd gives for the same score
    x = torch.rand(1, 3, 160, 200, generator=torch.Generator().manual_seed(5))
    e = camkit.GradCAM(frcnn, layer="backbone.body[1]").explain(x, Detection.each(min_score=0.0))
    h = frcnn.backbone.body.register_forward_hook(lambda _m, _i, o: store.update(o))
    try:
        with torch.enable_grad():
            out = frcnn(x)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(out[0]["scores"][0], store["1"])
    assert e.weights[0, 0].abs().sum() > 0
    assert_rel(e.weights[0, 0], g.mean((2, 3))[0])


def test_faster_rcnn_gradcam_each_detection_equals_hand(frcnn):
    x = torch.rand(1, 3, 160, 200, generator=torch.Generator().manual_seed(3))  # scale 1, padded to 160x224
    assert task_layer(frcnn) == "backbone.body.16"
    with torch.no_grad():
        dets = frcnn(x)[0]
    e = camkit.GradCAM(frcnn).explain(x, targets=Detection.each(min_score=0.0))
    k = len(dets["scores"])
    assert e.maps.shape == (1, k, 160, 200) and e.layers == ["backbone.body.16"]
    torch.testing.assert_close(e.target.boxes[0], dets["boxes"])
    layer = frcnn.backbone.body.get_submodule("16")
    for j in range(k):
        raw, w, s = hand_gradcam(frcnn, layer, x, lambda out: out[0]["scores"][j])
        torch.testing.assert_close(e.scores[0, j], s[()], rtol=1e-5, atol=1e-6)
        assert_rel(e.weights[0, j], w[0])
        assert_rel(e.raw[0, j], raw[0])
        torch.testing.assert_close(e.maps[0, j], padded_map(raw, (160, 224), (160, 200))[0], rtol=1e-4, atol=1e-5)


def test_retinanet_keyed_fpn_level_sum_of_boxes_equals_hand(retina):
    x = torch.rand(1, 3, 96, 120, generator=torch.Generator().manual_seed(4))  # scale 1, padded to 96x128
    with torch.no_grad():
        d = retina(x)[0]
    boxes, labels = d["boxes"][[1, 3]], d["labels"][[1, 3]]  # (detections 0 and 2 come from other FPN levels)
    e = camkit.GradCAM(retina, layer="backbone[0]").explain(x, targets=Detection([boxes], [labels]))
    raw, w, s = hand_gradcam(
        retina, retina.backbone, x,
        lambda out: matched_score(out, boxes[0], labels[0]) + matched_score(out, boxes[1], labels[1]), key="0")
    torch.testing.assert_close(e.scores[0], s, rtol=1e-5, atol=1e-6)
    assert_rel(e.weights[0], w[0])
    assert_rel(e.raw[0], raw[0])
    assert e.maps.shape == (1, 96, 120)
    torch.testing.assert_close(e.maps, padded_map(raw, (96, 128), (96, 120)), rtol=1e-4, atol=1e-5)
    assert task_layer(retina) == "backbone.body.layer4"


def test_unmatched_box_warns_and_adds_zero(tiny):
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = tiny(x)[0]
    one = Detection([d["boxes"][:1]], [d["labels"][:1]])
    other = int(d["labels"][0]) % 2 + 1  # a label the first box does not have
    lonely = torch.cat([d["boxes"][:1], torch.tensor([[0.0, 0.0, 2.0, 2.0]])])
    with pytest.warns(UserWarning, match="matches no predicted box"):
        two = Detection([lonely], [torch.tensor([int(d["labels"][0]), other])])
        e2 = camkit.GradCAM(tiny, layer="backbone.feat").explain(x, targets=two)
    e1 = camkit.GradCAM(tiny, layer="backbone.feat").explain(x, targets=one)
    torch.testing.assert_close(e2.scores, e1.scores)
    torch.testing.assert_close(e2.maps, e1.maps)


def test_ablation_and_score_cam_on_a_detector_equal_hand(tiny):
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))  # padded to 64x96
    with torch.no_grad():
        d = tiny(x)[0]
    box, label = d["boxes"][1], d["labels"][1]
    target = Detection([box[None]], [label[None]])
    layer = tiny.backbone.feat
    store = {}
    h = layer.register_forward_hook(lambda _m, _i, o: store.update(a=o))
    with torch.no_grad():
        y = matched_score(tiny(x), box, label)
    h.remove()
    a = store["a"]
    ys = []
    for c in range(a.shape[1]):  # Ablation-CAM by hand: zero channel c, rerun, rescore
        def zero(_m, _i, o, c=c):
            o = o.clone()
            o[:, c] = 0
            return o
        h = layer.register_forward_hook(zero)
        with torch.no_grad():
            ys.append(matched_score(tiny(x), box, label))
        h.remove()
    w_abl = (y - torch.stack(ys)) / y.abs()
    for recompute in ("tail", "full"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the tail replay must reproduce the detector (no fallback)
            e = camkit.AblationCAM(tiny, layer="backbone.feat", recompute=recompute, batch_size=3).explain(x, target)
        torch.testing.assert_close(e.weights[0], w_abl.float(), rtol=1e-4, atol=1e-5)
    masks = padded_map(a[0], (64, 96), (64, 80))  # Score-CAM masks in the input's frame
    s = []
    for c in range(a.shape[1]):
        with torch.no_grad():
            s.append(matched_score(tiny(x * masks[c]), box, label))
    e = camkit.ScoreCAM(tiny, layer="backbone.feat", batch_size=5).explain(x, target)
    torch.testing.assert_close(e.weights[0], torch.softmax(torch.stack(s), 0), rtol=1e-4, atol=1e-6)


def test_ablation_cam_on_a_keyed_layer_equals_plain_layer():
    for kind in ("tuple", "dict"):
        net = KeyedNet(kind).eval()
        xx = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
        key = "1" if kind == "tuple" else "high"
        for recompute in ("tail", "full"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                keyed = camkit.AblationCAM(net, layer=f"encoder[{key}]", recompute=recompute).explain(xx, [0, 2])
            plain = camkit.AblationCAM(net, layer="encoder.b", recompute=recompute).explain(xx, [0, 2])
            torch.testing.assert_close(keyed.weights, plain.weights)
    net = KeyedNet("tuple").eval()
    both = camkit.AblationCAM(net, layer=["encoder[0]", "encoder[1]"]).explain(xx, [0, 2])  # one module, two targets
    ref = [camkit.AblationCAM(net, layer=n).explain(xx, [0, 2]).weights for n in ("encoder[0]", "encoder[1]")]
    torch.testing.assert_close(both.weights[0], ref[0])
    torch.testing.assert_close(both.weights[1], ref[1])
    # element 0 is ablated as the head receives it, element 1 held fixed: the head is linear in mean(a), so
    # y - y_c = W[cls, c] * mean(a_c)
    with torch.no_grad():
        a = net.encoder.a(xx)
        y = net(xx)[[0, 1], [0, 2]]
    w = net.fc.weight[[0, 2], :4] * a.mean((2, 3)) / y.abs()[:, None]
    torch.testing.assert_close(ref[0], w, rtol=1e-4, atol=1e-6)


def test_other_methods_on_a_detector(tiny):
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    for name in ("gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "smoothgradcam++"):
        opts = {"n": 2} if name == "smoothgradcam++" else {}
        e = camkit.create(name, tiny, layer="backbone.feat", **opts).explain(x, Detection.each(0.0))
        assert e.maps.shape == (1, 4, 64, 80) and bool(torch.isfinite(e.maps).all()), name
    eig = camkit.EigenCAM(tiny, layer="backbone.feat").explain(x, Detection.each(0.0))
    assert torch.equal(eig.maps[0, 0], eig.maps[0, 3])  # class-agnostic
    g = camkit.create("guided-gradcam", tiny, layer="backbone.feat").explain(x, Detection.each(0.0))
    assert g.maps.shape == (1, 4, 3, 64, 80) and float(g.maps.abs().amax()) > 0
    with pytest.raises(UnsupportedModelError, match="global-average-pooling"):
        camkit.CAM(tiny, layer="backbone.feat").explain(x, Detection.each(0.0))


def test_detection_bad_inputs(tiny):
    x = torch.rand(1, 3, 64, 80)
    with pytest.raises(TargetError, match="per image"):
        Detection(torch.rand(2, 4), [[1, 2]])  # boxes of one image not wrapped in a list
    with pytest.raises(TargetError, match=r"\(N >= 1, 4\)"):
        Detection([torch.rand(2, 3)], [[1, 2]])
    with pytest.raises(TargetError, match="one per box"):
        Detection([torch.tensor([[0.0, 0, 5, 5], [1, 1, 6, 6]])], [[1]])
    with pytest.raises(TargetError, match="one list of labels per image"):
        Detection([torch.tensor([[0.0, 0, 5, 5]])], [[1], [2]])
    with pytest.raises(TargetError, match="x1 > x0"):
        Detection([torch.tensor([[5.0, 5, 2, 2]])], [[1]])
    with pytest.raises(TargetError, match="batch has 1"):
        camkit.GradCAM(tiny, layer="backbone.feat").explain(x, Detection([[[0, 0, 5, 5]], [[0, 0, 5, 5]]], [[1], [1]]))
    with pytest.raises(TargetError, match="no detection with score >= 2"):
        camkit.GradCAM(tiny, layer="backbone.feat").explain(x, Detection.each(min_score=2.0))
    empty = tiny_detector(box_score_thresh=1.0)  # finds nothing
    with pytest.raises(TargetError, match="found nothing in image 0"):
        camkit.GradCAM(empty, layer="backbone.feat").explain(x, Detection([[[0, 0, 9, 9]]], [[1]]))
    with pytest.raises(TargetError, match="Detection.each"):
        camkit.GradCAM(tiny, layer="backbone.feat").explain(x)  # default class target on a detector
    with pytest.raises(LayerNotFoundError, match="backbone.feat"):
        camkit.GradCAM(tiny).explain(x, Detection.each(0.0))  # auto: no known trunk -> the choices


# ------------------------------------------------------------------------------------------ frame


def test_frame_resample_equals_separable_interpolation_by_hand():
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(2, 1, 5, 7, generator=g)
    rects = torch.tensor([[0.0, 0.0, 1.0, 0.8], [0.0, 0.0, 0.75, 1.0]])
    out = InputRegion(rects, (13, 20)).resample(raw, (13, 20))
    for b in range(2):
        y0, x0, y1, x1 = rects[b].tolist()
        ys = (y0 + (np.arange(13) + 0.5) / 13 * (y1 - y0)) * 5 - 0.5  # grid coordinates of pixel centres
        xs = (x0 + (np.arange(20) + 0.5) / 20 * (x1 - x0)) * 7 - 0.5
        m = raw[b, 0].double().numpy()
        rows = np.stack([np.interp(xs, np.arange(7), r) for r in m])  # (5, 20); np.interp clamps = border
        ref = np.stack([np.interp(ys, np.arange(5), c) for c in rows.T]).T  # (13, 20)
        np.testing.assert_allclose(out[b, 0].numpy(), ref, rtol=1e-5, atol=1e-6)
    full = InputRegion(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (13, 20)).resample(raw[:1], (13, 20))
    torch.testing.assert_close(full, F.interpolate(raw[:1], size=(13, 20), mode="bilinear", align_corners=False))


def test_detector_frame_on_a_non_square_resized_padded_input(tiny):
    x = torch.rand(1, 3, 40, 51)  # scale 64/40 = 1.6 -> 64 x 81, padded to 64 x 96
    with input_region(tiny) as region_of, torch.no_grad():
        tiny(x)
    torch.testing.assert_close(region_of().rects, torch.tensor([[0.0, 0.0, 1.0, 81 / 96]]))
    e = camkit.GradCAM(tiny, layer="backbone.feat").explain(x, Detection.each(0.0))
    assert e.maps.shape == (1, 4, 40, 51)
    torch.testing.assert_close(e.maps, camkit.core.postprocess.normalize(region_of().resample(e.raw, (40, 51))))
    naive = camkit.core.postprocess.finalize([e.raw], (40, 51))
    assert (naive - e.maps).abs().max() > 0.05  # ignoring the padding shifts the map


# ------------------------------------------------------------------------------------------ segmentation


@pytest.mark.parametrize("kind", ["tensor", "dict", "object"])
def test_toy_segmentation_gradcam_weights_are_head_weights_times_mask_share(kind):
    net = ToySeg(kind=kind).eval()
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # logits 8 x 12
    with torch.no_grad():
        z = net.head(net.feat(x))
        a = net.feat(x)
    W = net.head.weight[:, :, 0, 0]
    # mask=None: the predicted pixels of the class (each image's most frequent one)
    classes = [int(z[b].argmax(0).flatten().mode().values) for b in range(2)]
    e = camkit.GradCAM(net, layer="feat").explain(x, targets=Segmentation(classes))
    for b, c in enumerate(classes):
        share = (z[b].argmax(0) == c).float().mean()
        torch.testing.assert_close(e.weights[b], W[c] * share, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(e.raw[b], torch.relu(torch.einsum("c,chw->hw", W[c] * share, a[b])), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e.scores[b], (z[b, c] * (z[b].argmax(0) == c)).sum(), rtol=1e-5, atol=1e-5)
    # a mask at the input's resolution (4x the logits), resized by area: the share of each logit pixel
    mask = torch.zeros(32, 48, dtype=torch.bool)
    mask[5:19, 10:31] = True
    e = camkit.GradCAM(net, layer="feat").explain(x, targets=Segmentation(1, mask=mask))
    cover = mask.float().reshape(8, 4, 12, 4).mean((1, 3))
    torch.testing.assert_close(e.weights, (W[1] * cover.mean()).expand(2, -1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.scores, (z[:, 1] * cover).sum((1, 2)), rtol=1e-5, atol=1e-5)


def test_segmentation_each_one_map_per_class():
    net = ToySeg(classes=4).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        present = torch.unique(net(x)[0].argmax(0)).tolist()
    e = camkit.GradCAM(net, layer="feat").explain(x, targets=Segmentation.each())
    assert e.target.classes.tolist() == [present] and e.maps.shape == (1, len(present), 32, 32)
    for k, c in enumerate(present):
        one = camkit.GradCAM(net, layer="feat").explain(x, targets=Segmentation(c))
        torch.testing.assert_close(e.maps[0, k], one.maps[0])


@pytest.fixture(scope="module")
def fcn():
    torch.manual_seed(0)
    return tvs.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=False).eval()


def test_fcn_predicted_mask_gradcam_equals_hand(fcn):
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    assert task_layer(fcn) == "backbone.layer4" and model_task(fcn) == "segmentation"
    with torch.no_grad():
        pred = fcn(x)["out"][0].argmax(0)
    c = int(pred.flatten().mode().values)
    e = camkit.GradCAM(fcn).explain(x, targets=Segmentation(c))
    raw, w, s = hand_gradcam(fcn, fcn.backbone.layer4, x, lambda o: (o["out"][0, c] * (pred == c)).sum())
    assert e.layers == ["backbone.layer4"]
    torch.testing.assert_close(e.scores[0], s, rtol=1e-5, atol=1e-4)
    assert_rel(e.weights[0], w[0])
    assert_rel(e.raw[0], raw[0])


def test_deeplab_given_mask_gradcam_equals_hand():
    torch.manual_seed(0)
    net = tvs.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4, aux_loss=False).eval()
    assert task_layer(net) == "backbone.16"
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(2, 64, 96, generator=torch.Generator().manual_seed(2)) > 0.6  # 2x the output: area-resized
    cover = mask.float().reshape(2, 32, 2, 48, 2).mean((2, 4))
    e = camkit.GradCAM(net).explain(x, targets=Segmentation([3, 1], mask=mask))
    raw, w, s = hand_gradcam(net, net.backbone.get_submodule("16"), x,
                             lambda o: (o["out"][0, 3] * cover[0]).sum() + (o["out"][1, 1] * cover[1]).sum())
    assert_rel(e.weights, w)  # images are independent: the gradient of the sum is each image's
    assert_rel(e.raw, raw)


def test_segmentation_bad_inputs():
    net = ToySeg().eval()
    x = torch.rand(2, 3, 32, 48)
    cam = camkit.GradCAM(net, layer="feat")
    with pytest.raises(TargetError, match="out of range.*3 classes"):
        cam.explain(x, Segmentation(3))
    with pytest.raises(TargetError, match="one class per image"):
        cam.explain(x, Segmentation([0, 1, 2]))
    with pytest.raises(TargetError, match="aspect ratio"):
        cam.explain(x, Segmentation(0, mask=torch.ones(32, 32)))
    with pytest.raises(TargetError, match=r"mask must be .* batch of 2"):
        cam.explain(x, Segmentation(0, mask=torch.ones(3, 8, 12)))
    with pytest.raises(TargetError, match="Segmentation"):
        cam.explain(x)  # the default class target on (B, K, h, w) logits points to Segmentation
    with torch.no_grad():
        net.head.bias[2] = -1e3  # class 2 is predicted nowhere
    with pytest.warns(UserWarning, match="no pixel of image . to class 2"):
        e = cam.explain(x, Segmentation(2))
    assert float(e.maps.abs().max()) == 0.0 and float(e.scores.abs().max()) == 0.0


# ------------------------------------------------------------------------------------------ layers


def test_keyed_layer_names_and_errors():
    assert split_key("backbone.body[3]") == ("backbone.body", ("3",))
    assert split_key("enc[hidden][-1]") == ("enc", ("hidden", "-1"))
    assert split_key("layer4") == ("layer4", ())
    with pytest.raises(LayerNotFoundError, match="module.name\\[key\\]"):
        split_key("backbone[0")
    t = torch.zeros(1)
    out = {"a": (t, t + 1), "b": t}
    assert select(out, ("a", "-1"), "m[a][-1]") is out["a"][1]
    new = replace(out, ("a", "0"), t + 5)
    assert float(new["a"][0]) == 5 and out["a"][0] is t and new["b"] is t
    with pytest.raises(InputError, match=r"'m\[a\]', 'm\[b\]'"):
        select(out, ("c",), "m[c]")
    with pytest.raises(InputError, match=r"address one of its tensors: 'm\[a\]\[0\]', 'm\[a\]\[1\]'"):
        select(out, ("a",), "m[a]")


@pytest.mark.parametrize("kind,key", [("tuple", "1"), ("dict", "high"), ("tuple", "-1")])
def test_keyed_layer_gradcam_equals_the_module_that_makes_the_tensor(kind, key):
    net = KeyedNet(kind).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    keyed = camkit.GradCAM(net, layer=f"encoder[{key}]").explain(x, [0, 1])
    plain = camkit.GradCAM(net, layer="encoder.b").explain(x, [0, 1])
    torch.testing.assert_close(keyed.weights, plain.weights)
    torch.testing.assert_close(keyed.maps, plain.maps)
    with pytest.raises(InputError, match="choose one of"):
        camkit.GradCAM(net, layer="encoder[zz]").explain(x)


def test_task_layer_rules():
    torch.manual_seed(0)
    lr = tvs.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    assert task_layer(lr) == "backbone.16"
    assert task_layer(KeyedNet()) is None and model_task(KeyedNet()) is None


# ------------------------------------------------------------------------------------------ metrics


def test_mask_metrics_by_hand():
    m = torch.tensor([[0.0, 1.0, 0.5], [0.25, 0.0, 1.0]])
    mask = torch.tensor([[False, True, True], [False, False, False]])
    assert float(mask_energy(m, mask)) == pytest.approx(1.5 / 2.75)
    assert float(mask_pointing_game(m, mask)) == pytest.approx(0.5)  # two maxima, one inside
    assert float(mask_pointing_game(m, mask, tolerance=1.0)) == pytest.approx(1.0)
    soft = mask.float() * 0.5
    assert float(mask_energy(m, soft)) == pytest.approx(0.75 / 2.75)
    batch = torch.stack([m, m.flip(1)])
    torch.testing.assert_close(mask_energy(batch, mask), torch.tensor([1.5 / 2.75, 1.0 / 2.75]))
    box = torch.tensor([[1.0, 0.0, 3.0, 1.0]])  # the same region as a box
    assert float(energy_pointing_game(m, box)) == pytest.approx(float(mask_energy(m, mask)))
    assert float(pointing_game(m, box)) == pytest.approx(float(mask_pointing_game(m, mask)))
    assert float(localization_iou(m, box, threshold=0.9)) == pytest.approx(1 / 2)
    with pytest.raises(InputError, match="does not match"):
        mask_energy(m, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="empty"):
        mask_pointing_game(m, torch.zeros(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ CLI


def _png(path, h, w):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return str(path)


def test_cli_detect_and_segment(tmp_path, monkeypatch, capsys):
    from camkit import cli
    import camkit.bench.sources as sources

    img = _png(tmp_path / "street.png", 48, 60)
    det = tiny_detector()
    monkeypatch.setattr(sources, "load_model", lambda spec, device="cpu": det)
    rc = cli.main(["explain", img, "--model", "torchvision:x", "--task", "detect", "--min-score", "0",
                   "--method", "gradcam", "--layer", "backbone.feat", "-o", str(tmp_path / "d")])
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert "street_detections.png" in names and "street_gradcam_det4.png" in names and "street_gradcam_det4.npy" in names
    assert np.load(tmp_path / "d" / "street_gradcam_det1.npy").shape == (48, 60)
    seg = ToySeg(kind="dict").eval()
    monkeypatch.setattr(sources, "load_model", lambda spec, device="cpu": seg)
    with torch.no_grad():
        from camkit.data.imageio import read_image
        present = torch.unique(seg(read_image(img)[None])["out"][0].argmax(0)).tolist()
    rc = cli.main(["explain", img, "--model", "torchvision:y", "--task", "segment", "--method", "gradcam,eigencam",
                   "--layer", "feat", "-o", str(tmp_path / "s")])
    assert rc == 0
    for c in present:
        assert (tmp_path / "s" / f"street_gradcam_{c}.png").exists() and (tmp_path / "s" / f"street_eigencam_{c}.npy").exists()
    rc = cli.main(["explain", img, "--model", "torchvision:y", "--task", "segment", "--target", "7", "--method",
                   "gradcam", "--layer", "feat", "-o", str(tmp_path / "s")])
    assert rc == 1 and "out of range" in capsys.readouterr().err
