"""NIfTI volumes: read one for a 3-D model, write a map back aligned with the scan.

`read_volume` loads a ``.nii`` / ``.nii.gz`` with nibabel (``pip install 'camkit[medical]'``),
keeps the file's shape, affine and header, scales intensities to [0, 1] (``intensity``) and resamples
the voxel grid to the model's ``(D, H, W)`` trilinearly (``align_corners=False``: voxel centres
scale about the grid's edges). The array axes stay the file's own, ``(i, j, k) -> (D, H, W)``,
so no reorientation happens anywhere. A 4-D file's last axis is its channels.

`write_map` resamples a map computed on the model's grid back to the file's original shape
with the inverse of that resampling and saves it with the original affine: model voxel ``j`` of
``m`` along an axis of ``n`` original voxels lands at original voxel ``(j + 0.5) · n / m − 0.5``, so
the map opens aligned with the scan in 3D Slicer / ITK-SNAP / FSLeyes.

`slices_through` gives the three orthogonal slices of a volume through a voxel (the map's
maximum by default) with their physical aspect (from the voxel sizes), for pictures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.data.imageio import optional
from camkit.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
Intensity = Literal["minmax", "percentile", "none"]
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _nib() -> Any:
    return optional("nibabel", "reading NIfTI volumes", "medical")


@dataclass(frozen=True)
class Volume:
    """A scan read for a 3-D model.

    - ``tensor``: ``(1, C, D, H, W)`` float in [0, 1] (``intensity="none"``: as stored) on the model's grid;
    - ``data``: ``(C, D0, H0, W0)`` float32, the scaled intensities on the file's own grid;
    - ``shape``: ``(D0, H0, W0)`` the file's grid; ``affine``: its 4x4 voxel-to-world matrix;
    - ``spacing``: voxel sizes along ``(D0, H0, W0)`` in the file's units (mm);
    - ``header``: the nibabel header (copied into every map written with `write_map`).
    """

    tensor: Tensor
    data: Tensor
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: Any
    path: str

    def world(self, voxel: Any) -> np.ndarray:
        """World coordinates (the affine applied) of voxel index/indices ``(..., 3)`` on the file's grid."""
        v = np.asarray(voxel, dtype=np.float64)
        return v @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_original(self, m: Tensor) -> Tensor:
        """A map ``(D, H, W)`` on the model's grid -> ``(D0, H0, W0)`` on the file's (trilinear, inverse
        of the input's resampling)."""
        return resample(m, self.shape)


def resample(grid: Tensor, size: tuple[int, ...]) -> Tensor:
    """Trilinear resampling (``align_corners=False``) of ``(D, H, W)`` or ``(C, D, H, W)`` to ``size``."""
    g = grid.float()
    lead = g.ndim - 3
    if lead not in (0, 1):
        raise InputError(f"a volume must be (D, H, W) or (C, D, H, W), got shape {tuple(grid.shape)}")
    size = tuple(int(s) for s in size)
    if tuple(g.shape[-3:]) == size:
        return g
    x = g.reshape(1, -1, *g.shape[-3:])
    out = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return out[0] if lead else out[0, 0]


def _scaled(data: np.ndarray, intensity: str, path: str) -> np.ndarray:
    if intensity == "none":
        return data
    if intensity == "minmax":
        lo, hi = float(data.min()), float(data.max())
    elif intensity == "percentile":
        lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5]))
    else:
        raise InputError(f"intensity must be 'minmax', 'percentile' or 'none', got {intensity!r}")
    if not hi > lo:
        raise InputError(f"{path!r}: the volume is constant ({lo:g}); nothing to explain")
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def read_volume(path: PathLike, size: Optional[tuple[int, int, int]] = None, *, channels: Optional[int] = None,
                intensity: Intensity = "minmax") -> Volume:
    """Read a NIfTI file for a model taking ``(1, C, *size)`` (None: the file's own grid).

    ``intensity``: ``"minmax"`` (default, [min, max] -> [0, 1]), ``"percentile"`` (0.5th..99.5th
    percentile -> [0, 1], clipped: robust to a few extreme voxels, e.g. CT metal) or ``"none"``.
    ``channels``: repeat a one-channel scan to this many channels (a model built with ``in_channels=3``).
    """
    nib = _nib()
    path = os.fspath(path)
    if not Path(path).is_file():
        raise InputError(f"cannot read NIfTI volume {path!r}: no such file")
    try:
        img = nib.load(path)
        raw = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors ...
        raise InputError(f"cannot read NIfTI volume {path!r}: {exc}") from exc
    if raw.ndim == 4 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim not in (3, 4) or min(raw.shape[:3]) < 1:
        raise InputError(f"{path!r} holds an array of shape {raw.shape}; a volume is (I, J, K) or (I, J, K, channels)")
    if not np.isfinite(raw).all():
        raise InputError(f"{path!r} holds NaN or infinite voxels")
    data = np.moveaxis(raw, -1, 0) if raw.ndim == 4 else raw[None]
    data = _scaled(data, intensity, path).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(data))
    if channels is not None and t.shape[0] != channels:
        if t.shape[0] != 1:
            raise InputError(f"{path!r} has {t.shape[0]} channels; the model takes {channels}")
        t_model = t.expand(channels, *t.shape[1:])
    else:
        t_model = t
    shape = tuple(int(s) for s in data.shape[1:])
    tensor = resample(t_model, size) if size is not None else t_model.float()
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Volume(tensor=tensor.unsqueeze(0).contiguous(), data=t, shape=shape,  # type: ignore[arg-type]
                  affine=np.asarray(img.affine, dtype=np.float64), spacing=zooms, header=img.header, path=path)


def write_map(path: PathLike, m: Tensor, like: Volume) -> Path:
    """Save map ``m`` (``(D, H, W)`` on the model's grid, or already ``like.shape``) as a float32 NIfTI
    with ``like``'s original shape, affine and header (orientation codes kept); returns the path."""
    nib = _nib()
    if not is_nifti(path):
        raise InputError(f"a map is written as .nii or .nii.gz, got {str(path)!r}")
    if not isinstance(m, Tensor) or m.ndim != 3:
        raise InputError(f"a volume map must be a (D, H, W) tensor, got {tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__}")
    data = like.to_original(m.detach().cpu()).numpy().astype(np.float32)
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    if hasattr(header, "set_slope_inter"):
        header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, like.affine, header=header)
    nib.save(img, os.fspath(path))
    return Path(path)


def peak_voxel(m: Tensor) -> tuple[int, int, int]:
    """Index ``(d, h, w)`` of a ``(D, H, W)`` map's maximum (the first in raster order on ties)."""
    flat = int(m.reshape(-1).argmax())
    d, rest = divmod(flat, m.shape[1] * m.shape[2])
    return d, *divmod(rest, m.shape[2])  # type: ignore[return-value]


def slices_through(volume: Tensor, voxel: tuple[int, int, int]) -> list[Tensor]:
    """The three orthogonal slices of a ``(..., D, H, W)`` grid through ``voxel``: ``[(H, W) at d,
    (D, W) at h, (D, H) at w]`` (leading axes kept)."""
    d, h, w = voxel
    return [volume[..., d, :, :], volume[..., :, h, :], volume[..., :, :, w]]
