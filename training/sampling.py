"""2D training and validation samples cut from the cached volumes.

A training sample is one object on one slice: a label value's connected component (or the
whole label value), drawn as follows. A volume is chosen uniformly; with probability
``fg_class_prob`` a label value is chosen first (uniformly among those present, which
oversamples rare labels) and then a slice holding it, otherwise any slice holding foreground.
MONAI's 2D augmentations (flips, small rotations and zooms, intensity shift/scale, Gaussian
noise) are applied to the slice and its label before the object is picked.

Every draw is a pure function of ``(seed, epoch, index)``, so a sample does not depend on the
worker, the rank or the resumed position. The image then goes through the inference code
(:func:`napari_sam_med.preprocessing.prepare_image`): resize longest side, normalise, pad.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from napari_sam_med.config import SamConfig
from napari_sam_med.preprocessing import geometry_for, prepare_image

from .data import AXES, LoadedVolumes
from .propagation import NO_BOX, jitter_mask, margin_box, pick_pair, prompt_object, target_for

logger = logging.getLogger(__name__)


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``(rows, cols)`` slice of an ``(X, Y, Z)`` array (rows = the later axis)."""
    return np.take(volume, index, axis=axis).T


def slice_index(labels: np.ndarray, axis: int, values: list[int] | None, max_slices: int) -> dict:
    """``{value: sorted slice indices holding it}`` along ``axis`` of an ``(X, Y, Z)`` label."""
    other = tuple(a for a in range(3) if a != axis)
    present = [int(v) for v in np.unique(labels) if v > 0]
    out = {}
    for v in present if values is None else [v for v in present if v in values]:
        slices = np.nonzero(np.any(labels == v, axis=other))[0]
        if max_slices and slices.size > max_slices:  # evenly spaced, away from the end caps
            picks = np.linspace(0, slices.size - 1, max_slices + 2)[1:-1].round().astype(int)
            slices = slices[np.unique(picks)]
        out[v] = slices.tolist()
    return out


def pick_objects(label2d: np.ndarray, value: int, mode: str, min_area: float) -> list[np.ndarray]:
    """Objects of ``value`` on a slice: its connected components or the whole value mask."""
    mask = label2d == value
    if mode == "labels":
        return [mask] if mask.sum() >= min_area else []
    comps, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, comps, range(1, n + 1))
    return [comps == i + 1 for i in range(n) if sizes[i] >= min_area]


def to_model_input(
    image2d: np.ndarray, mask2d: np.ndarray, config: SamConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(3, S, S)`` normalised image and ``(1, S, S)`` float mask on the padded model input."""
    x, geom = prepare_image(np.clip(image2d, 0, 255), config)
    m = torch.from_numpy(mask2d.astype(np.float32))[None, None]
    m = F.interpolate(m, size=geom.input_size, mode="nearest")
    s = config.img_size
    m = F.pad(m, (0, s - geom.input_size[1], 0, s - geom.input_size[0]))
    return x[0], m[0]


def _area_scale(shape: tuple[int, int], config: SamConfig) -> float:
    geom = geometry_for(shape, config)
    return (geom.input_size[0] / shape[0]) * (geom.input_size[1] / shape[1])


class _VolumeIndex:
    def __init__(self, volumes: LoadedVolumes, data_cfg: Any, max_slices: int) -> None:
        self.volumes = volumes
        self.axis = AXES[data_cfg.axis]
        self.index = []
        for i in range(len(volumes)):
            labels = np.asarray(volumes.get(i)["label"])[0]
            idx = slice_index(labels, self.axis, data_cfg.label_values, max_slices)
            self.index.append(idx)
        self.usable = [i for i, idx in enumerate(self.index) if idx]
        self._full: list[dict] | None = None
        if not self.usable:
            raise ValueError("no volume has foreground along the chosen axis")

    @property
    def full_index(self) -> list[dict]:
        """Like ``index`` but with every slice of each label value (no ``max_slices``)."""
        if self._full is None:
            self._full = [
                slice_index(np.asarray(self.volumes.get(i)["label"])[0], self.axis, list(idx), 0)
                for i, idx in enumerate(self.index)
            ]
        return self._full

    def num_slices(self, i: int) -> int:
        """Slices of volume ``i`` along the sampling axis."""
        return int(np.asarray(self.volumes.get(i)["label"]).shape[1 + self.axis])

    def arrays(self, i: int, z: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.volumes.get(i)
        img = _slice(np.asarray(item["image"])[0], self.axis, z)
        lab = _slice(np.asarray(item["label"])[0], self.axis, z)
        return img.astype(np.float32), lab


def build_augment(aug: Any) -> Any:
    """MONAI 2D dictionary augmentations on ``{"image", "label"}`` of shape ``(1, H, W)``."""
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandGaussianNoised,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandZoomd,
    )

    keys = ["image", "label"]
    return Compose(
        [
            RandFlipd(keys, prob=aug.flip_prob, spatial_axis=0),
            RandFlipd(keys, prob=aug.flip_prob, spatial_axis=1),
            RandRotated(
                keys,
                range_x=np.deg2rad(aug.rotate_deg),
                prob=aug.rotate_prob,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandZoomd(
                keys,
                prob=aug.zoom_prob,
                min_zoom=aug.zoom[0],
                max_zoom=aug.zoom[1],
                mode=("bilinear", "nearest"),
                keep_size=True,
            ),
            RandShiftIntensityd("image", offsets=aug.shift, prob=aug.intensity_prob),
            RandScaleIntensityd("image", factors=aug.scale, prob=aug.intensity_prob),
            RandGaussianNoised("image", std=aug.noise_std, prob=aug.noise_prob),
        ]
    )


class TrainSlices(Dataset):
    """Random 2D objects for training; ``len`` is one sampling epoch.

    Items: ``image (3, S, S)``, ``mask (1, S, S)``, ``uid`` (global sample id), ``key``
    (``"case|slice"``: the image identity, used by the embedding cache when not augmented),
    ``label`` and ``prompt_box (4,)``: the first prompt of a propagation sample (see
    :mod:`training.propagation`, probability ``data.propagate_prob``; its mask may be empty),
    NaN for the usual simulated first prompt.
    """

    def __init__(
        self,
        volumes: LoadedVolumes,
        data_cfg: Any,
        aug_cfg: Any | None,
        model_config: SamConfig,
        seed: int,
    ) -> None:
        self.vi = _VolumeIndex(volumes, data_cfg, data_cfg.max_slices_per_case)
        self.cfg = data_cfg
        self.augment = build_augment(aug_cfg) if aug_cfg is not None and aug_cfg.enabled else None
        self.model_config = model_config
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the sampling epoch (changes every draw)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.cfg.samples_per_epoch)

    def _draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        vol = self.vi.usable[int(rng.integers(len(self.vi.usable)))]
        idx = self.vi.index[vol]
        if rng.random() < self.cfg.fg_class_prob:
            value = list(idx)[int(rng.integers(len(idx)))]
            z = idx[value][int(rng.integers(len(idx[value])))]
        else:
            all_slices = sorted({s for v in idx.values() for s in v})
            z = all_slices[int(rng.integers(len(all_slices)))]
            value = None
        return vol, z, value

    def _augmented(self, img, lab, rng):
        if self.augment is None:
            return img, lab
        self.augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
        out = self.augment({"image": img[None].copy(), "label": lab[None].astype(np.float32)})
        return np.asarray(out["image"])[0], np.asarray(out["label"])[0].round().astype(np.int16)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uid = self.epoch * len(self) + int(i)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        if getattr(self.cfg, "propagate_prob", 0.0) > 0 and rng.random() < self.cfg.propagate_prob:
            return self._propagation_item(rng, uid)
        for _attempt in range(20):
            vol, z, value = self._draw(rng)
            img, lab = self.vi.arrays(vol, z)
            img, lab = self._augmented(img, lab, rng)
            values = [v for v in np.unique(lab) if v > 0 and v in self.vi.index[vol]]
            if value is None and values:
                value = int(values[int(rng.integers(len(values)))])
            min_area = self.cfg.min_object_area / _area_scale(lab.shape, self.model_config)
            objects = pick_objects(lab, value, self.cfg.objects, min_area) if value else []
            if objects:
                obj = objects[int(rng.integers(len(objects)))]
                image, mask = to_model_input(img, obj, self.model_config)
                case = self.vi.volumes.cases[vol].case
                return {
                    "image": image,
                    "mask": mask,
                    "uid": uid,
                    "key": f"{case}|{z}",
                    "label": int(value),
                    "prompt_box": torch.tensor(NO_BOX, dtype=torch.float32),
                }
        raise ValueError(
            f"no object of at least {self.cfg.min_object_area} px found in 20 draws; "
            "lower data.min_object_area"
        )


    def _propagation_item(self, rng: np.random.Generator, uid: int) -> dict[str, Any]:
        """A sample shaped like one propagation step of the 3D engine (no augmentation)."""
        vol = self.vi.usable[int(rng.integers(len(self.vi.usable)))]
        values = sorted(self.vi.full_index[vol])
        value = values[int(rng.integers(len(values)))]
        slices = self.vi.full_index[vol][value]
        zp, z = pick_pair(
            self.vi.index[vol][value],
            slices,
            self.vi.num_slices(vol),
            rng,
            self.cfg.propagate_max_gap,
            self.cfg.propagate_past_end_prob,
        )
        _, lab_p = self.vi.arrays(vol, zp)
        img, lab = self.vi.arrays(vol, z)
        cfg = self.model_config
        prompt = to_model_input(img, prompt_object(lab_p, value, rng), cfg)[1][0].numpy() > 0.5
        seen = jitter_mask(prompt, rng, int(self.cfg.propagate_jitter))
        lo, hi = self.cfg.propagate_margin
        box = margin_box(seen if seen.any() else prompt, float(rng.uniform(lo, hi)), seen.shape)
        image, full = to_model_input(img, lab == value, cfg)
        target = target_for(full[0].numpy() > 0.5, 1, prompt, box)
        case = self.vi.volumes.cases[vol].case
        return {
            "image": image,
            "mask": torch.from_numpy(target.astype(np.float32))[None],
            "uid": uid,
            "key": f"{case}|{z}",
            "label": int(value),
            "prompt_box": torch.tensor(box, dtype=torch.float32),
        }


class ValSlices(Dataset):
    """Deterministic validation objects: per case and label value, evenly spaced slices, the
    largest object on each (or the whole label value with ``objects: labels``)."""

    def __init__(self, volumes: LoadedVolumes, data_cfg: Any, model_config: SamConfig) -> None:
        self.vi = _VolumeIndex(
            volumes, data_cfg, 0
        )  # all slices: max_slices_per_case is for training
        self.model_config = model_config
        self.items = []
        for vol in self.vi.usable:
            for value, slices in self.vi.index[vol].items():
                n = min(data_cfg.val_slices_per_case, len(slices))
                picks = np.linspace(0, len(slices) - 1, n + 2)[1:-1].round().astype(int)
                for z in sorted({slices[p] for p in picks}):
                    _, lab = self.vi.arrays(vol, z)
                    min_area = data_cfg.min_object_area / _area_scale(lab.shape, model_config)
                    objs = pick_objects(lab, value, data_cfg.objects, min_area)
                    if objs:
                        k = int(np.argmax([o.sum() for o in objs]))
                        self.items.append((vol, z, value, k, data_cfg.objects, min_area))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol, z, value, k, mode, min_area = self.items[i]
        img, lab = self.vi.arrays(vol, z)
        obj = pick_objects(lab, value, mode, min_area)[k]
        image, mask = to_model_input(img, obj, self.model_config)
        case = self.vi.volumes.cases[vol].case
        return {"image": image, "mask": mask, "label": int(value), "key": f"{case}|{z}"}
