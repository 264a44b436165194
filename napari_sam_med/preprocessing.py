"""Intensity presets, resize-longest-side + pad, and the one coordinate converter.

Conventions:
    * Volumes are numpy arrays ordered ``(z, y, x)``; a slice is ``(y, x)`` = ``(H, W)``.
    * SAM prompts are ``(x, y)`` pixel coordinates of the slice; boxes are ``(x0, y0, x1, y1)``.
    * Intensity presets map a whole volume (so slices stay consistent) to float32 in
      ``[0, 255]``; the model's own normalisation (SAM mean/std or per-image min-max) is then
      applied by :func:`prepare_image`. No 8-bit round trip happens anywhere.

The same code serves inference and training (``training/`` imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .config import SamConfig

_Coords = TypeVar("_Coords", np.ndarray, torch.Tensor)  # coordinates come back as they came in

@dataclass(frozen=True)
class IntensityPreset:
    """How to map raw voxel values to ``[0, 255]``.

    ``kind="window"`` uses ``width``/``level`` (CT, in HU). ``kind="percentile"`` clips to the
    ``low``-``high`` percentiles (of the non-zero voxels when ``nonzero``). ``kind="minmax"``
    scales the whole volume's range.
    """

    name: str
    kind: str
    width: float = 0.0
    level: float = 0.0
    low: float = 0.5
    high: float = 99.5
    nonzero: bool = True
    description: str = ""


PRESETS: dict[str, IntensityPreset] = {
    p.name: p
    for p in (
        IntensityPreset("ct_soft_tissue", "window", 400, 40, description="CT soft tissue W400/L40"),
        IntensityPreset("ct_lung", "window", 1500, -600, description="CT lung W1500/L-600"),
        IntensityPreset("ct_bone", "window", 1800, 400, description="CT bone W1800/L400"),
        IntensityPreset("ct_brain", "window", 80, 40, description="CT brain W80/L40"),
        IntensityPreset("ct_liver", "window", 150, 30, description="CT liver W150/L30"),
        IntensityPreset(
            "mr",
            "percentile",
            low=0.5,
            high=99.5,
            nonzero=True,
            description="MR: clip to 0.5-99.5 percentiles of non-zero voxels",
        ),
        IntensityPreset("minmax", "minmax", description="whole-volume min-max"),
        IntensityPreset(
            "identity",
            "window",
            255,
            127.5,
            description="values already in 0-255 (8-bit grey or RGB images)",
        ),
    )
}
DEFAULT_CT_PRESET = "ct_soft_tissue"
DEFAULT_MR_PRESET = "mr"


def get_preset(name: str | IntensityPreset) -> IntensityPreset:
    """Look up an intensity preset by name (case-insensitive)."""
    if isinstance(name, IntensityPreset):
        return name
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown intensity preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[key]


def guess_preset(modality: str | None = None, array: np.ndarray | None = None) -> str:
    """Choose a preset from a modality string (CT/MR/MRI) or, failing that, from the values.

    An array whose minimum is below -500 and whose maximum is above 0 is taken as CT in HU.
    """
    if modality:
        mod = modality.strip().upper()
        if mod.startswith("CT"):
            return DEFAULT_CT_PRESET
        if mod.startswith("MR") or mod in ("T1", "T2", "FLAIR", "T1C", "DWI", "ADC"):
            return DEFAULT_MR_PRESET
    if array is not None and array.size:
        lo, hi = float(np.min(array)), float(np.max(array))
        if lo < -500 and hi > 0:
            return DEFAULT_CT_PRESET
    return DEFAULT_MR_PRESET


def intensity_range(volume: np.ndarray, preset: str | IntensityPreset) -> tuple[float, float]:
    """The raw-value interval ``(lo, hi)`` that ``preset`` maps to ``[0, 255]`` for ``volume``."""
    p = get_preset(preset)
    if p.kind == "window":
        return p.level - p.width / 2.0, p.level + p.width / 2.0
    data = np.asarray(volume)
    if p.kind == "percentile":
        vals = data[data != 0] if p.nonzero else data.ravel()
        if vals.size == 0:
            vals = data.ravel()
        lo, hi = np.percentile(vals, [p.low, p.high])
        return float(lo), float(hi)
    return float(np.min(data)), float(np.max(data))


def apply_intensity(
    volume: np.ndarray,
    preset: str | IntensityPreset,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map raw values to float32 ``[0, 255]`` with one range for the whole volume.

    Args:
        volume: any-dimensional array (a whole volume, so that slices stay consistent).
        preset: a preset name from :data:`PRESETS`.
        value_range: a precomputed ``(lo, hi)`` (e.g. from :func:`intensity_range` on the
            whole volume when only some slices are mapped).

    Raises:
        ValueError: if the volume holds NaN or Inf.
    """
    data = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise ValueError(f"image contains {bad} NaN/Inf values; fix or mask them before segmenting")
    lo, hi = value_range if value_range is not None else intensity_range(data, preset)
    scale = 255.0 / max(hi - lo, 1e-6)
    out = (np.clip(data, lo, hi) - lo) * scale
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- geometry


def preprocess_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """Size ``(h', w')`` after resizing the longest side of ``(h, w)`` to ``target``."""
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class ImageGeometry:
    """Where an original ``(H, W)`` slice sits inside the model's square padded input."""

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    img_size: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Factors (sx, sy) from original pixel coordinates to model-input coordinates."""
        return (
            self.input_size[1] / self.original_size[1],
            self.input_size[0] / self.original_size[0],
        )

    def coords_to_input(self, coords: _Coords) -> _Coords:
        """Map ``(..., 2)`` (x, y) original coordinates into model-input coordinates."""
        sx, sy = self.scale_xy
        out = (
            coords.clone().float()
            if isinstance(coords, torch.Tensor)
            else np.array(coords, dtype=np.float32, copy=True)
        )
        out[..., 0] = out[..., 0] * sx
        out[..., 1] = out[..., 1] * sy
        return out

    def boxes_to_input(self, boxes: _Coords) -> _Coords:
        """Map ``(..., 4)`` (x0, y0, x1, y1) boxes into model-input coordinates."""
        shape = boxes.shape
        return self.coords_to_input(boxes.reshape(*shape[:-1], 2, 2)).reshape(shape)

    def coords_from_input(self, coords: _Coords) -> _Coords:
        """Inverse of :meth:`coords_to_input`."""
        sx, sy = self.scale_xy
        out = (
            coords.clone().float()
            if isinstance(coords, torch.Tensor)
            else np.array(coords, dtype=np.float32, copy=True)
        )
        out[..., 0] = out[..., 0] / sx
        out[..., 1] = out[..., 1] / sy
        return out


def geometry_for(shape_hw: Sequence[int], config: SamConfig) -> ImageGeometry:
    """The :class:`ImageGeometry` of an ``(H, W)`` slice for a model configuration."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    return ImageGeometry((h, w), preprocess_shape(h, w, config.img_size), config.img_size)


def prepare_image(
    image: np.ndarray | torch.Tensor, config: SamConfig, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, ImageGeometry]:
    """Resize, normalise and pad one slice for the image encoder.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` array with values in ``[0, 255]`` (use
            :func:`apply_intensity` for CT/MR volumes first). Grey images are repeated to RGB.
        config: the model configuration (input size and normalisation).
        device: where the returned tensor lives.

    Returns:
        ``(x, geometry)`` where ``x`` is ``(1, 3, S, S)`` float32 ready for the encoder.
    """
    arr = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if arr.ndim == 2:
        arr = arr[..., None].expand(-1, -1, 3)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {tuple(arr.shape)}")
    if arr.shape[-1] == 1:
        arr = arr.expand(-1, -1, 3)
    geom = geometry_for(arr.shape[:2], config)
    x = arr.permute(2, 0, 1)[None].to(device)
    if geom.input_size != geom.original_size:
        x = F.interpolate(
            x, size=geom.input_size, mode="bilinear", align_corners=False, antialias=True
        )
    if config.normalization == "minmax":
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    else:
        mean = torch.tensor(config.pixel_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(config.pixel_std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    s = config.img_size
    x = F.pad(x, (0, s - geom.input_size[1], 0, s - geom.input_size[0]))
    return x.contiguous(), geom


def low_res_to_original(logits: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Upscale ``(B, K, h, w)`` low-res logits to the original slice ``(B, K, H, W)``.

    The logits cover the padded square input; they are upscaled to it, the padding is
    cropped, and the rest is resized to the original size (bilinear), as SAM does.
    """
    s = geometry.img_size
    out = F.interpolate(logits.float(), (s, s), mode="bilinear", align_corners=False)
    out = out[..., : geometry.input_size[0], : geometry.input_size[1]]
    if geometry.input_size != geometry.original_size:
        out = F.interpolate(out, geometry.original_size, mode="bilinear", align_corners=False)
    return out


def mask_to_low_res(mask: np.ndarray, geometry: ImageGeometry, size: int) -> np.ndarray:
    """A binary ``(H, W)`` mask as ``(size, size)`` float logits-like prompt (+/-10)."""
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    t = F.interpolate(t, geometry.input_size, mode="bilinear", align_corners=False)
    s = geometry.img_size
    t = F.pad(t, (0, s - geometry.input_size[1], 0, s - geometry.input_size[0]))
    t = F.interpolate(t, (size, size), mode="bilinear", align_corners=False)
    return np.where(t[0, 0].numpy() > 0.5, 10.0, -10.0).astype(np.float32)


# ------------------------------------------------------------- napari <-> SAM coordinates


def zyx_to_slice_xy(points_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """THE converter from napari/volume order to SAM order.

    Args:
        points_zyx: ``(N, 3)`` points as ``(z, y, x)`` (napari data coordinates of a volume),
            or ``(N, 2)`` as ``(y, x)`` for a 2D image.

    Returns:
        ``(z, xy)``: ``z`` as ``(N,)`` int slice indices (zeros for 2D) and ``xy`` as
        ``(N, 2)`` float32 SAM coordinates ``(x, y)``.
    """
    pts = np.asarray(points_zyx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N, 3) as (z, y, x) or (N, 2) as (y, x); got {pts.shape}")
    if pts.shape[1] == 2:
        z = np.zeros(len(pts), dtype=np.int64)
        yx = pts
    else:
        z = np.rint(pts[:, 0]).astype(np.int64)
        yx = pts[:, 1:]
    return z, yx[:, ::-1].astype(np.float32)


def slice_xy_to_zyx(z: int | np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zyx_to_slice_xy`: ``(N, 2)`` (x, y) on slice(s) ``z`` to ``(N, 3)``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    zz = np.broadcast_to(np.asarray(z, dtype=np.float64), (len(xy),))
    return np.column_stack([zz, xy[:, 1], xy[:, 0]])
