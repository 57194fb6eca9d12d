"""``camkit explain`` on video files and NIfTI volumes (models taking ``(B, C, T, H, W)`` / ``(B, C, D, H, W)``).

A video (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ...; PyAV) is decoded and sampled to the
model's ``input_size`` ``(T, H, W)`` (`camkit.data.video.read_video`; corrupt frames are skipped
and reported). Per method and target: ``STEM_METHOD[_kK]_strip.png`` (every sampled frame with the map
over it), ``STEM_METHOD[_kK].gif`` (the same, animated; frames at the video's own size, at most 480 px
on the longer side) and ``.npy`` (the map ``(T, H, W)`` on the model's grid).

A NIfTI volume (``.nii``, ``.nii.gz``; nibabel) is read on the model's ``input_size`` ``(D, H, W)``
(the file's own grid when the model names none) with the channels the model's first 3-D convolution
takes (`camkit.data.volume.read_volume`). Per method and target: ``STEM_METHOD[_kK].nii.gz``
(the map on the scan's original shape and affine: it opens aligned with the scan in 3D Slicer /
ITK-SNAP), ``STEM_METHOD[_kK]_slices.png`` (three orthogonal slices through the map's maximum) and
``.npy`` (the map on the model's grid).

A method whose ``output`` is ``"attribution"`` is drawn per frame with `camkit.viz.attribution`
(clips) or as its absolute value (volumes); ``"cam"`` and ``"concepts"`` maps as overlays.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from camkit import viz
from camkit.data.video import VIDEO_SUFFIXES, read_video
from camkit.data.volume import is_nifti, read_volume, write_map
from camkit.errors import InputError
from camkit.methods import get

from .common import warn

Kind = str  # "image", "video" or "volume"


def file_kind(path: str) -> Kind:
    """``"volume"`` for NIfTI, ``"video"`` for a video suffix (``.gif`` stays an image), else ``"image"``."""
    if is_nifti(path):
        return "volume"
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES and suffix != ".gif" else "image"


def file_stem(path: str) -> str:
    """The name a file's outputs start with: ``scan.nii.gz`` -> ``scan``, ``clip.mp4`` -> ``clip``."""
    name = Path(path).name
    name = re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE) if is_nifti(path) else Path(name).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "input"


def _grid(model: nn.Module, what: str) -> Optional[tuple[int, int, int]]:
    """The model's ``input_size`` when it is 3-D; None when it names none; an error when it is an image size."""
    size = getattr(model, "input_size", None)
    if size is None:
        return None
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise InputError(f"the model takes images of size {size}, not {what}; explain a {what} with a video or "
                         "volume model (e.g. --model torchvision:r3d_18, moving_digits_net, digit_volumes_net)")
    return size  # type: ignore[return-value]


def _channels(model: nn.Module) -> Optional[int]:
    """The channels the model takes: its ``in_channels`` attribute, else its first 3-D convolution's."""
    declared = getattr(model, "in_channels", None)
    if isinstance(declared, int):
        return declared
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv3d)), None)
    return conv.in_channels if conv is not None else None


def _slots(e: Any, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Maps ``(n, K, ...)`` and targets ``(n, K)`` of an explanation of ``n`` clips or volumes."""
    signed = e.output == "attribution"
    maps = e.maps.detach().float().cpu()
    if maps.dim() == (5 if signed else 4):  # one target per input: no K axis
        maps = maps.unsqueeze(1)
    targets = e.targets.reshape(n, -1).cpu() if e.targets is not None else None
    return maps, targets


def _caption(cats: Optional[Sequence[str]], targets: Optional[torch.Tensor], k: int) -> str:
    if targets is None:
        return "callable"
    c = int(targets[0, k])
    return str(cats[c]) if cats and 0 <= c < len(cats) else str(c)


def explain_files(model: nn.Module, paths: Sequence[str], methods: Sequence[str], out: Path, *,
                  targets: Any, options: dict[str, Any], device: str = "cpu",
                  predictions: Optional[Callable[[nn.Module, torch.Tensor, Sequence[str], Any], None]] = None
                  ) -> list[Path]:
    """Write the pictures, maps and files of videos and NIfTI volumes (module docstring); returns the
    paths written. ``targets`` as for `BaseCAM.explain`; ``predictions(model, x, [path], cats)``
    prints each input's classes."""
    out.mkdir(parents=True, exist_ok=True)
    cats = getattr(model, "categories", None)
    written: list[Path] = []
    for path in paths:
        kind = file_kind(path)
        if kind == "image":
            raise InputError(f"{path!r} is neither a video nor a NIfTI volume; explain images and clips in separate calls")
        grid = _grid(model, "clip" if kind == "video" else "volume")
        if kind == "video":
            if grid is None:
                raise InputError(f"cannot tell how many frames the model takes (it has no input_size (T, H, W)); "
                                 f"a video model is needed for {path!r}")
            clip = read_video(path, frames=grid[0], size=grid[1:])
            if clip.skipped:
                warn("explain", f"{path}: {clip.skipped} corrupt frame(s) skipped ({clip.decoded} decoded)")
            x, volume = clip.clip, None
        else:
            volume = read_volume(path, grid, channels=_channels(model))
            x, clip = volume.tensor, None
        x = x.to(device)
        if predictions is not None:
            predictions(model, x, [path], cats)
        for method in methods:
            cls = get(method)
            e = cls(model, **options).explain(x, targets=None if cls.output == "concepts" else targets)
            maps, classes = _slots(e, 1)
            signed = e.output == "attribution"
            for k in range(maps.shape[1]):
                suffix = "" if maps.shape[1] == 1 else f"_k{k + 1}"
                base = out / f"{file_stem(path)}_{re.sub(r'[^A-Za-z0-9+_-]', '', cls.name)}{suffix}"
                m = maps[0, k]
                np.save(f"{base}.npy", m.numpy())
                if clip is not None:
                    written += _write_clip(base, clip.frames, m, signed, clip.fps)
                else:
                    written += _write_volume(base, volume, m, signed)
                print(f"  {cls.name} -> {written[-2].name}, {written[-1].name} ({_caption(cats, classes, k)}) + .npy")
    return written


GIF_SIDE = 480  # the animation's longer side at most (a 1080p video would make a GIF of hundreds of MB)


def _write_clip(base: Path, frames: torch.Tensor, m: torch.Tensor, signed: bool, fps: float) -> list[Path]:
    strip, gif = Path(f"{base}_strip.png"), Path(f"{base}.gif")
    side = max(frames.shape[-2:])
    if side > GIF_SIDE:
        size = tuple(max(1, round(s * GIF_SIDE / side)) for s in frames.shape[-2:])
        frames = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    if signed:  # (C, T, H, W) attributions: one picture per frame
        pictures = [viz.attribution(m[:, t]) for t in range(m.shape[1])]
        viz.grid(pictures, cols=len(pictures)).save(strip)
        from camkit.data.video import save_animation

        save_animation(gif, pictures, fps=min(fps or 4.0, 8.0))
    else:
        viz.frame_strip(frames, m).save(strip)
        viz.save_clip(gif, frames, m, fps=min(fps or 4.0, 8.0))
    return [strip, gif]


def _write_volume(base: Path, volume: Any, m: torch.Tensor, signed: bool) -> list[Path]:
    if signed:  # (C, D, H, W) attributions: their magnitude, scaled to [0, 1]
        m = m.abs().sum(0)
        m = m / m.max().clamp(min=1e-12)
    nifti, slices = Path(f"{base}.nii.gz"), Path(f"{base}_slices.png")
    write_map(nifti, m, volume)
    viz.volume_slices(volume.data, volume.to_original(m), spacing=volume.spacing).save(slices)
    return [nifti, slices]
