"""Video files: decode with PyAV, sample the frames a model takes, write animations.

`read_video` decodes every frame of a file's first video stream (PyAV, ``pip install
'camkit[video]'``), picks ``frames`` of them evenly over the whole video (frame ``floor((i + 0.5) ·
n / T)`` for ``i = 0 .. T-1`` of ``n`` decoded frames: the centre of each of T equal segments; a video
shorter than T repeats frames), and returns them at their own size and resized to the model's
``(H, W)`` as a ``(1, 3, T, H, W)`` clip of pixels in [0, 1]. A packet that does not decode (a
corrupt frame) is skipped and counted in ``VideoClip.skipped``, never an error; a file that cannot
be opened, has no video stream or no decodable frame is an `camkit.errors.InputError`
naming the file. Frames are decoded twice (once to count them, once to keep the chosen ones), so
memory holds only T frames however long the video.

`save_animation` writes frames as an animated GIF (Pillow) or an MP4 (PyAV, H.264).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.data.imageio import optional
from camkit.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


def _av() -> Any:
    return optional("av", "reading and writing video", "video")


@dataclass(frozen=True)
class VideoClip:
    """T frames sampled from a video file.

    - ``clip``: ``(1, 3, T, H, W)`` float in [0, 1] at the size asked for (what a video model takes);
    - ``frames``: ``(T, 3, H0, W0)`` float in [0, 1], the same frames at the video's own size;
    - ``indices``: which decoded frames were taken (0-based, among the frames that decoded);
    - ``decoded``: how many frames decoded; ``skipped``: how many packets did not (corrupt frames);
    - ``fps``: the stream's average frame rate (0.0 when the file does not say).
    """

    clip: Tensor
    frames: Tensor
    indices: tuple[int, ...]
    decoded: int
    skipped: int
    fps: float
    path: str

    @property
    def num_frames(self) -> int:
        """T."""
        return int(self.clip.shape[2])


def sample_indices(n: int, frames: int) -> list[int]:
    """``frames`` indices spread evenly over ``n`` frames: ``floor((i + 0.5) · n / frames)``."""
    if n < 1 or frames < 1:
        raise InputError(f"cannot sample {frames} frame(s) from {n}; both must be >= 1")
    return [min(n - 1, int((i + 0.5) * n / frames)) for i in range(frames)]


def _decoded(path: str, convert: bool) -> Iterator[Union[np.ndarray, None, BaseException]]:
    """Per packet of the first video stream: each decoded frame (``(H, W, 3)`` uint8 when ``convert``,
    else None), or the exception of a packet that did not decode."""
    av = _av()
    try:
        container = av.open(path)
    except Exception as exc:  # av.error.*, OSError, ... : the file is not a video PyAV can open
        raise InputError(f"cannot read video {path!r}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{path!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                yield exc
                continue
            for frame in decoded:
                yield frame.to_ndarray(format="rgb24") if convert else None


def _fps(path: str) -> float:
    av = _av()
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def read_video(path: PathLike, frames: int, size: tuple[int, int] | None = None) -> VideoClip:
    """Decode ``path`` and sample ``frames`` frames evenly (module docstring); ``size = (H, W)`` resizes
    the clip (bilinear, antialiased), None keeps the video's own size."""
    path = os.fspath(path)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames must be a positive int (the frames T the model takes), got {frames!r}")
    if not Path(path).is_file():
        raise InputError(f"cannot read video {path!r}: no such file")
    n = skipped = 0
    for item in _decoded(path, convert=False):
        if isinstance(item, BaseException):
            skipped += 1
        else:
            n += 1
    if n == 0:
        raise InputError(f"cannot read video {path!r}: no frame decodes ({skipped} corrupt packet(s))")
    indices = sample_indices(n, frames)
    wanted = set(indices)
    kept: dict[int, np.ndarray] = {}
    i = 0
    for item in _decoded(path, convert=True):
        if isinstance(item, BaseException):
            continue
        if i in wanted:
            kept[i] = item
        i += 1
    if len(kept) != len(wanted):  # the file changed between the passes, or decoding is not repeatable
        raise InputError(f"cannot read video {path!r}: frames {sorted(wanted - set(kept))[:5]} decoded once, not twice")
    original = torch.from_numpy(np.stack([kept[j] for j in indices])).permute(0, 3, 1, 2).float().div_(255.0)
    clip = original
    if size is not None and tuple(size) != tuple(original.shape[-2:]):
        clip = F.interpolate(original, size=tuple(int(s) for s in size), mode="bilinear", antialias=True,
                             align_corners=False).clamp_(0.0, 1.0)
    return VideoClip(clip=clip.permute(1, 0, 2, 3).unsqueeze(0).contiguous(), frames=original,
                     indices=tuple(indices), decoded=n, skipped=skipped, fps=_fps(path), path=path)


def _uint8_frames(frames: Sequence[Any]) -> list[np.ndarray]:
    """PIL images or ``(H, W, 3)`` uint8 arrays, all of one size."""
    out = [np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames]
    if not out:
        raise InputError("no frames to write")
    if any(a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3 or a.shape != out[0].shape for a in out):
        raise InputError("frames must be PIL images or (H, W, 3) uint8 arrays, all of one size")
    return out


def save_animation(path: PathLike, frames: Sequence[Any], fps: float = 4.0) -> Path:
    """Write ``frames`` (PIL images or ``(H, W, 3)`` uint8 arrays) as ``.gif`` (Pillow, looping) or
    ``.mp4`` (PyAV, H.264, sides padded to even numbers); returns the path."""
    path = Path(path)
    arrays = _uint8_frames(frames)
    if fps <= 0:
        raise InputError(f"fps must be > 0, got {fps}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(a) for a in arrays]
        images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
        return path
    if suffix != ".mp4":
        raise InputError(f"an animation is written as .gif or .mp4, got {str(path)!r}")
    av = _av()
    h, w = arrays[0].shape[:2]
    eh, ew = h + h % 2, w + w % 2  # yuv420p needs even sides
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = ew, eh, "yuv420p"
        for a in arrays:
            if (eh, ew) != (h, w):
                a = np.pad(a, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
