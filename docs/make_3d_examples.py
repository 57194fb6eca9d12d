"""Make docs/video_example.jpg and docs/volume_example.jpg with the bundled, trained 3-D nets (offline, seconds).

    python3 docs/make_3d_examples.py

A held-out clip of the generated moving-digits set (``moving_digits_net``, trained weights) as a frame
strip with its Grad-CAM, the digit's box drawn in every frame; and a held-out volume of the extruded-digits
set (``digit_volumes_net``) as three orthogonal slices through the map's maximum.
"""
from __future__ import annotations

from pathlib import Path

import torch

import camkit
from camkit import viz
from camkit.data import digit_volumes, moving_digits

here = Path(__file__).parent

clips = moving_digits(4, seed=1)                                  # held-out source digits (test split)
clip = clips[2]
model = camkit.models.load("moving_digits_net")                    # bundled trained weights
x = clip.image[None]                                               # (1, 3, 8, 32, 32)
e = camkit.GradCAM(model).explain(x)
frames = [viz.draw_boxes(viz.to_pil(clip.image[:, t]).resize((128, 128)), clip.boxes[t, [0, 1, 3, 4]] * 4, width=1)
          for t in range(x.shape[2])]
overlays = [viz.draw_boxes(p, clip.boxes[t, [0, 1, 3, 4]] * 4, width=1)
            for t, p in enumerate(viz.clip_overlays([f.resize((128, 128)) for f in frames], e.maps[0]))]
strip = viz.grid(frames + overlays, cols=len(frames), pad=3)
strip.save(here / "video_example.jpg", quality=90)
print(f"video: true {clip.label}, predicted {int(e.targets.flatten()[0])}; {here / 'video_example.jpg'} "
      f"({strip.width}x{strip.height})")

vol = digit_volumes(4, seed=1)[1]
vmodel = camkit.models.load("digit_volumes_net")
ev = camkit.GradCAM(vmodel).explain(vol.image[None])              # (1, 1, 32, 32, 32)
picture = viz.show_volume(ev, vol.image[None], cell=200)
picture.save(here / "volume_example.jpg", quality=90)
print(f"volume: true {vol.label}, predicted {int(ev.targets.flatten()[0])}; box {vol.boxes[0].long().tolist()}, "
      f"map peak (d, h, w) {tuple(int(v) for v in torch.nonzero(ev.maps[0] == ev.maps[0].max())[0])}; "
      f"{here / 'volume_example.jpg'} ({picture.width}x{picture.height})")
