"""The survey's figures, drawn with matplotlib's Agg backend (no display needed).

- `iou_strip` -- Figures 1-6: per model, the IoU of the top and of the least predicted class
  per method, one point per correctly classified image (from records only);
- `layer_figure` -- Figures 7-10: Grad-CAM at several layers of a model, a few images;
- `guided_figure` -- Figure 11: image, Grad-CAM, Guided Backprop and Guided Grad-CAM;
- `randomization_curve` -- the cascading parameter-randomisation sanity check: per method, the
  mean Spearman correlation with the intact model's map against the number of randomised blocks.

Figure functions return ``(png_bytes, caption)``.
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..core.hooks import Hooks
from ..layers.names import POOLING

Figure = tuple[bytes, str]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------- Figures 1-6


def iou_strip(values: dict[str, dict[str, list[float]]], model: str, which: str = "correctly classified",
              seed: int = 0) -> Figure:
    """Strip plot: for each target kind (``top1``, ``least``) a panel, one column of points per method
    (horizontal jitter fixed by ``seed``) with the mean as a bar. ``values[kind][method]`` = IoUs."""
    plt = _pyplot()
    kinds = [k for k in ("top1", "least") if k in values]
    methods = list(dict.fromkeys(m for k in kinds for m in values[k]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(6.0, 0.55 * len(methods) * len(kinds) + 2), 3.6),
                             squeeze=False, sharey=True)
    rng = np.random.default_rng(seed)
    titles = {"top1": "top predicted class", "least": "least predicted class"}
    for ax, kind in zip(axes[0], kinds):
        for x, method in enumerate(methods):
            v = np.asarray(values[kind].get(method, []), dtype=float)
            if v.size:
                ax.scatter(x + rng.uniform(-0.22, 0.22, v.size), v, s=9, alpha=0.6)
                ax.hlines(v.mean(), x - 0.3, x + 0.3, colors="black", linewidth=1.5)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([_short(m, 16) for m in methods], rotation=60, ha="right", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{model}: IoU of the {titles[kind]}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("IoU (map box vs best ground-truth box)")
    caption = (f"IoU of the top and of the least predicted class per method, {model}; one point per image, "
               f"images: {which}; black bar = mean (survey Figures 1-6).")
    return _png(fig), caption


# --------------------------------------------------------------------------------------- Figures 7-10


def figure_layers(model: nn.Module, x: torch.Tensor, count: int) -> list[str]:
    """Up to ``count`` layers to compare, ending with the model's default layer.

    Convolutional models: for each spatial resolution, the last top-level module or numbered block
    (``layer3``, ``features.22``, ``_blocks.10``) producing it -- stage ends, pooling excluded.
    Token models: the default layer's siblings in other blocks (``blocks.*.norm1``), evenly spaced.
    """
    default = getattr(model, "default_layer", None)
    seen: list[tuple[str, tuple[int, ...]]] = []

    def eligible(name: str) -> bool:
        parts = name.split(".")
        return name == default or len(parts) == 1 or (len(parts) == 2 and parts[1].isdigit())

    with Hooks() as hooks, torch.no_grad():  # they fire for this call only
        for name, m in model.named_modules():
            if name and eligible(name) and not isinstance(m, POOLING):
                hooks.on_forward(m, lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape)))
                                 if isinstance(out, torch.Tensor) else None)
        model(x[:1])
    if default is None:
        return []
    shapes = dict(seen)
    if default in shapes and len(shapes[default]) == 3:  # tokens: same block position, other blocks
        def shape_of(n: str) -> str:  # blocks.3.norm1 -> blocks.#.norm1 (digits in the parent path only)
            parent, _, leaf = n.rpartition(".")
            return re.sub(r"\d+", "#", parent) + "." + leaf

        names = [n for n, _ in model.named_modules() if shape_of(n) == shape_of(default)]
        idx = np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int)
        return [names[i] for i in dict.fromkeys(idx.tolist())]
    stage_end: dict[tuple[int, ...], str] = {}  # resolution -> last module producing it (first-seen order)
    for name, shape in seen:
        if len(shape) == 4 and shape[-1] * shape[-2] > 1:
            stage_end[shape[-2:]] = name
    if default in shapes and len(shapes[default]) == 4:
        stage_end[shapes[default][-2:]] = default
    names = list(stage_end.values())
    if default in names:
        names = names[: names.index(default) + 1]
    return names[-count:]


def _still(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One item's image, map or attribution; for clips and volumes (``x`` is (B, C, D, H, W)) its middle slice."""
    if x.dim() == 4:
        return v
    mid = x.shape[2] // 2
    return v[mid] if v.dim() == 3 else v[:, mid]


def layer_figure(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, ids: Sequence[str],
                 count: int = 4) -> Optional[Figure]:
    """Grad-CAM of ``targets`` at `figure_layers` for each image (rows) and layer (columns)."""
    from .. import viz
    from ..methods import GradCAM

    layers = figure_layers(model, x, count)
    maps: list[tuple[str, torch.Tensor]] = []
    for layer in layers:
        try:
            maps.append((layer, GradCAM(model, layer=layer)(x, targets=targets.tolist())))
        except Exception:  # a layer the score does not depend on: left out of the figure
            continue
    if not maps:
        return None
    plt = _pyplot()
    rows, cols = x.shape[0], len(maps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows), squeeze=False)
    cats = getattr(model, "categories", None)
    for r in range(rows):
        axes[r][0].imshow(viz.to_pil(_still(x[r], x)))
        c = int(targets[r])
        axes[r][0].set_title(_short(f"{ids[r]}: {cats[c] if cats else c}", 26), fontsize=7)
        for col, (layer, m) in enumerate(maps, start=1):
            axes[r][col].imshow(viz.overlay(_still(x[r], x), _still(m[r], x)))
            if r == 0:
                axes[r][col].set_title(_short(layer, 24), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    caption = (f"Grad-CAM of the predicted class at {len(maps)} layers, early to late ({', '.join(n for n, _ in maps)}) "
               "(survey Figures 7-10)." + (" Clips and volumes: their middle slice." if x.dim() == 5 else ""))
    return _png(fig), caption


# ---------------------------------------------------------------------------------------- Figure 11


def guided_figure(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, ids: Sequence[str]) -> Optional[Figure]:
    """Per image: the image, Grad-CAM, Guided Backprop and Guided Grad-CAM of ``targets``; None when the
    guided methods are not registered."""
    from .. import viz
    from ..methods import get, list_methods

    if "guided-gradcam" not in list_methods():
        return None
    from ..methods import GradCAM, to_image

    layer = getattr(model, "default_layer", None) or "auto"
    t = targets.tolist()
    cam = GradCAM(model, layer=layer)(x, targets=t)
    backprop = get("guided-backprop")(model, layer=layer)(x, targets=t)
    guided = get("guided-gradcam")(model, layer=layer)(x, targets=t)
    plt = _pyplot()
    rows = x.shape[0]
    titles = ["image", "Grad-CAM", "Guided Backprop", "Guided Grad-CAM"]
    fig, axes = plt.subplots(rows, 4, figsize=(7.6, 1.9 * rows), squeeze=False)
    for r in range(rows):
        image = _still(x[r], x)
        panels = [viz.to_pil(image), viz.overlay(image, _still(cam[r], x)),
                  viz.to_pil(to_image(_still(backprop[r], x))), viz.to_pil(to_image(_still(guided[r], x)))]
        for c, im in enumerate(panels):
            axes[r][c].imshow(im)
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=8)
        axes[r][0].set_title(_short(ids[r], 26), fontsize=7)
    caption = (f"Guided Grad-CAM beside Grad-CAM at {layer} for the predicted class (survey Figure 11)."
               + (" Clips and volumes: their middle slice." if x.dim() == 5 else ""))
    return _png(fig), caption


# ------------------------------------------------------------------------------ sanity: randomisation


def randomization_curve(curves: dict[str, Sequence[float]], layers: Sequence[str], model: str, images: int) -> Figure:
    """One line per method: ``curves[method][k]`` = mean Spearman rank correlation of the maps after
    randomising ``layers[: k + 1]`` (output side first) with the maps of the intact model; 1 at 0 blocks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * len(layers) + 2), 3.8))
    x = np.arange(len(layers) + 1)
    markers = "os^vD<>ph*"
    for i, (method, ys) in enumerate(curves.items()):
        ax.plot(x[: len(ys) + 1], [1.0, *ys], marker=markers[i % len(markers)], markersize=4, linewidth=1.2,
                label=method)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(["none"] + [f"{k + 1}: {_short(n, 18)}" for k, n in enumerate(layers)], rotation=60,
                       ha="right", fontsize=7)
    ax.set_xlabel("blocks randomised, output side first (cumulative)", fontsize=8)
    ax.set_ylabel("Spearman ρ with the intact model's map", fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{model}: cascading parameter randomisation", fontsize=9)
    caption = (f"Cascading model-parameter randomisation (Adebayo et al. 2018) on {model}: the parameters of one block "
               f"after another are re-initialised, from the output side, and each method's map of the intact model's "
               f"top-1 class is recomputed; mean Spearman rank correlation with the intact map over {images} image(s). "
               "A method whose curve stays near 1 ignores the model's weights (a baseline map would be a flat line at 1); "
               "the table's sanity column is the one-step version (all parameters at once).")
    return _png(fig), caption
