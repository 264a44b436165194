"""The committed sample volumes: reproducible from their generator, small, and segmentable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from napari_sam_med.volume.io import check_label_matches, read_volume

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_sample_data", SAMPLE_DATA / "make_sample_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SAMPLE_DATA / "sample_data.json").read_text())


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample_data")
    _generator().generate(out)
    return out


def test_generator_reproduces_committed_files(regenerated: Path, manifest: dict) -> None:
    assert json.loads((regenerated / "sample_data.json").read_text()) == manifest
    for entry in manifest["volumes"].values():
        for key in ("image", "label"):
            ours = read_volume(regenerated / entry[key])
            committed = read_volume(SAMPLE_DATA / entry[key])
            check_label_matches(ours, committed)
            assert ours.array.dtype == committed.array.dtype
            if key == "label":
                np.testing.assert_array_equal(ours.array, committed.array)
            else:  # allow 1 unit for floating-point differences between platforms
                diff = np.abs(ours.array.astype(np.int32) - committed.array.astype(np.int32))
                assert diff.max() <= 1 and np.count_nonzero(diff) < diff.size * 1e-3


def test_manifest_describes_the_files(manifest: dict) -> None:
    assert set(manifest["volumes"]) == {"ct_phantom", "mr_phantom"}
    for entry in manifest["volumes"].values():
        image = read_volume(SAMPLE_DATA / entry["image"])
        label = read_volume(SAMPLE_DATA / entry["label"])
        check_label_matches(label, image)
        assert list(image.shape_xyz) == entry["size_xyz"]
        np.testing.assert_allclose(image.spacing, entry["spacing_xyz_mm"], atol=1e-6)
        np.testing.assert_allclose(image.origin, entry["origin_lps_mm"], atol=1e-4)
        assert entry["preset"] in ("ct_soft_tissue", "mr") and entry["modality"] in ("CT", "MR")
        assert sorted(np.unique(label.array)[1:].tolist()) == [o["label"] for o in entry["objects"]]
        for obj in entry["objects"]:
            x0, y0, z0, x1, y1, z1 = obj["box3d"]
            inside = label.array == obj["label"]
            assert inside[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1].sum() == inside.sum()
            for axis, (lo, hi) in enumerate(((z0, z1), (y0, y1), (x0, x1))):
                other = tuple(a for a in range(3) if a != axis)
                present = np.nonzero(inside.any(axis=other))[0]
                assert (present.min(), present.max()) == (lo, hi)
        for key in ("image", "label"):
            assert (SAMPLE_DATA / entry[key]).stat().st_size < 1.5e6


def test_tumours_stand_out_from_the_noise(manifest: dict) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    for entry in manifest["volumes"].values():
        image = read_volume(SAMPLE_DATA / entry["image"]).array.astype(np.float64)
        label = read_volume(SAMPLE_DATA / entry["label"]).array
        for obj in entry["objects"]:
            inside = label == obj["label"]
            core = ndimage.binary_erosion(inside, iterations=2)
            ring = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(
                inside, iterations=2
            )
            noise = image[core].std()
            contrast = abs(image[core].mean() - np.median(image[ring]))
            assert contrast > 3 * noise, f"{entry['image']} {obj['name']}: {contrast} vs {noise}"
