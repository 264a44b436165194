"""Fixtures for the training tests: small synthetic CT-like volumes written as NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.io import write_volume


def make_volume(seed: int, shape=(12, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy CT-like ``(z, y, x)`` volume in HU with one or two bright/dark blobs labelled."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    image = rng.normal(40, 15, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for value, hu in ((1, 140.0), (2, -60.0))[: 1 + seed % 2]:
        c = rng.uniform([4, 14, 14], [shape[0] - 4, shape[1] - 14, shape[2] - 14])
        r = rng.uniform(6, 10)
        blob = ((z - c[0]) * 2.0) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2
        image[blob] += hu
        label[blob] = value
    return image, label


def write_case(folder: Path, name: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write ``name_image.nii.gz`` + ``name_mask.nii.gz`` under ``folder/name/``."""
    spacing = (1.0, 1.0, 2.5)
    (folder / name).mkdir(parents=True, exist_ok=True)
    write_volume(Volume(image, spacing), folder / name / "CT_image.nii.gz")
    write_volume(Volume(label.astype(np.uint8), spacing), folder / name / "CT_mask.nii.gz")


@pytest.fixture()
def synthetic_dataset(tmp_path: Path) -> Path:
    """Four synthetic patients ``P0..P3`` in the ``PATIENT/CT_image + CT_mask`` layout."""
    root = tmp_path / "data"
    for i in range(4):
        write_case(root, f"P{i}", *make_volume(i))
    return root
