"""Make docs/viz_show.jpg, the picture in the README's "Pictures" section (offline, ~1 minute on a CPU).

    python3 docs/make_viz_example.py
"""
from __future__ import annotations

from pathlib import Path

import torch

import camkit
from camkit import viz
from camkit.data import samples
from camkit.data.geometry import fit

photos = samples(["chelsea", "coffee"])                           # real photos at their own size, with boxes
model = camkit.models.load("efficientnet_lite0")                  # real ImageNet weights, offline
inputs, frames = zip(*(fit(p.image, model.input_size) for p in photos))
x = torch.stack(inputs)
with camkit.GradCAM(model) as cam, camkit.FullGrad(model) as fullgrad:
    explained = {"Grad-CAM": cam.explain(x, targets=camkit.TopK(2)),
                 "FullGrad": fullgrad.explain(x, targets=camkit.TopK(2))}
picture = viz.show(explained, [p.image for p in photos], labels=model.categories,
                   boxes=[p.boxes for p in photos], frames=frames, titles=[p.id for p in photos], cell=200)
out = Path(__file__).with_name("viz_show.jpg")
picture.save(out, quality=88)
print(f"{out} ({picture.width}x{picture.height})")
