"""Volume pipeline with MONAI dictionary transforms, cached, with bad cases reported by name.

Per case: read image + label with ``napari_sam_med.volume.io`` (every format it reads, DICOM
series with RTSTRUCT labels included) -> channel-first -> ``Orientationd(data.orientation)``
(default ``LPS``) -> optional ``Spacingd`` -> intensity with the **inference presets**
(``napari_sam_med.preprocessing``, imported) -> cached by ``CacheDataset`` (memory) or
``PersistentDataset`` (disk).

Arrays after this pipeline are ``(1, X, Y, Z)`` in that orientation, the image float32 in
``[0, 255]``, the label integer. A case that cannot be read, whose label does not match its
image, or whose label is empty becomes ``{"case": ..., "error": reason}`` instead of raising,
so that :func:`load_volumes` can report it by name and skip it or stop before training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.transforms import Transform

from napari_sam_med.preprocessing import apply_intensity, guess_preset, intensity_range
from napari_sam_med.volume.datasets import Case
from napari_sam_med.volume.io import Volume

from .cases import load_case_arrays

logger = logging.getLogger(__name__)

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axes of (X, Y, Z) after Orientationd


def ras_affine(vol: Volume) -> np.ndarray:
    """4x4 voxel -> RAS world affine of a :class:`Volume` (index order ``(x, y, z)``)."""
    direction = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(np.asarray(vol.spacing, dtype=np.float64))
    lps[:3, 3] = np.asarray(vol.origin, dtype=np.float64)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


class LoadCased:
    """MONAI-style map transform: ``{"image", "label", ...}`` paths -> ``(X, Y, Z)`` MetaTensors.

    Reads with :func:`training.cases.load_case_arrays`, so DICOM series and RTSTRUCT labels
    work, and a label on another grid is a ``VolumeError`` naming both files.
    """

    def __init__(self, rtstruct_rois: Sequence[str] | None = None) -> None:
        self.rtstruct_rois = rtstruct_rois

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Load one case dict (see :meth:`napari_sam_med.volume.datasets.Case.to_dict`)."""
        from monai.data import MetaTensor

        case = Case(**{k: data[k] for k in ("case", "patient", "image", "label", "modality")})
        vol, label = load_case_arrays(case, rtstruct_rois=self.rtstruct_rois)
        if label is None:
            raise ValueError(f"{case.case}: no label file for image {case.image}")
        affine = ras_affine(vol)
        out = dict(data)
        out["image"] = MetaTensor(
            np.ascontiguousarray(vol.array.T, dtype=np.float32), affine=affine
        )
        out["label"] = MetaTensor(np.ascontiguousarray(label.T.astype(np.int16)), affine=affine)
        if out.get("modality") is None:
            out["modality"] = "CT" if guess_preset(None, vol.array) == "ct_soft_tissue" else "MR"
        return out


class PresetIntensityd:
    """Map the image to ``[0, 255]`` with the inference preset (``auto``: from the modality)."""

    def __init__(self, preset: str = "auto") -> None:
        self.preset = preset

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Apply :func:`napari_sam_med.preprocessing.apply_intensity` to ``data["image"]``."""
        out = dict(data)
        arr = np.asarray(out["image"], dtype=np.float32)
        preset = self.preset if self.preset != "auto" else guess_preset(out.get("modality"), arr)
        lo_hi = intensity_range(arr, preset)
        out["image"] = apply_intensity(arr, preset, lo_hi)
        out["label"] = np.asarray(out["label"]).astype(np.int16)
        out["preset"] = preset
        return out


class CheckLabeld:
    """Turn an all-zero label (after resampling) into an error naming the file."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Raise ``ValueError`` for an empty label."""
        if not np.any(np.asarray(data["label"]) > 0):
            raise ValueError(
                f"{data['case']}: label {data['label_path']} is empty (no voxel > 0) for image "
                f"{data['image_path']}"
            )
        return data


class SafePipeline(Transform):
    """Run the deterministic transforms; on a fault return ``{"case", "error"}`` instead."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Apply every transform in order, catching read and geometry errors."""
        item = dict(data, image_path=data["image"], label_path=data["label"])
        try:
            for t in self.transforms:
                item = t(item)
        except Exception as err:  # noqa: BLE001 - report any per-case fault by name
            case = str(data["case"])
            reason = str(err) if str(err).startswith(case + ":") else f"{case}: {err}"
            return {"case": data["case"], "error": reason}
        return item


def volume_transforms(data_cfg: Any) -> SafePipeline:
    """The deterministic MONAI chain for one case (load, channel, orientation, spacing,
    intensity)."""
    from monai.transforms import EnsureChannelFirstd, Orientationd, Spacingd

    keys = ["image", "label"]
    chain: list[Any] = [
        LoadCased(data_cfg.rtstruct_rois),
        EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
        Orientationd(keys=keys, axcodes=data_cfg.orientation, labels=None),
    ]
    if data_cfg.spacing:
        chain.append(Spacingd(keys=keys, pixdim=data_cfg.spacing, mode=("bilinear", "nearest")))
    chain += [PresetIntensityd(data_cfg.intensity), CheckLabeld()]
    return SafePipeline(chain)


@dataclass
class LoadedVolumes:
    """Cached volumes that passed every check, and the ones that did not."""

    dataset: Any  # MONAI Dataset of dicts: image (1, X, Y, Z) float32, label (1, X, Y, Z)
    indices: list[int]
    cases: list[Case]
    skipped: list[dict[str, str]]

    def get(self, i: int) -> dict[str, Any]:
        """The i-th good volume dict."""
        return self.dataset[self.indices[i]]

    def __len__(self) -> int:
        return len(self.indices)


def load_volumes(
    cases: Sequence[Case], data_cfg: Any, cache_dir: str | None = None, workers: int = 2
) -> LoadedVolumes:
    """Build the cached MONAI dataset and check every case once, up front.

    Args:
        cases: the cases to load.
        data_cfg: a ``DataConfig`` (``cache``, ``on_bad_case``, transform settings).
        cache_dir: PersistentDataset folder when ``data_cfg.cache == "disk"``.
        workers: threads used to fill the cache.

    Raises:
        ValueError: with ``on_bad_case: stop``, naming the bad case, its file and the fault.
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset

    items = [c.to_dict() for c in cases]
    transform = volume_transforms(data_cfg)
    if data_cfg.cache == "memory":
        ds = CacheDataset(items, transform, cache_rate=1.0, num_workers=workers, progress=False)
    elif data_cfg.cache == "disk":
        ds = PersistentDataset(items, transform, cache_dir=cache_dir)
    else:
        ds = Dataset(items, transform)
    good, skipped = [], []
    for i, case in enumerate(cases):
        item = ds[i]
        if "error" not in item:
            good.append(i)
            continue
        if data_cfg.on_bad_case in ("stop", "error"):
            raise ValueError(f"bad training case {item['error']}")
        logger.warning("skipping case %s", item["error"])
        skipped.append({"case": case.case, "reason": item["error"]})
    if not good:
        raise ValueError(f"none of the {len(cases)} cases is usable: {skipped[:3]}")
    return LoadedVolumes(ds, good, [cases[i] for i in good], skipped)
