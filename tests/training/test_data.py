"""MONAI volume pipeline, sources, bad-file handling and slice sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_volume, write_case  # noqa: I001 - the local test helper

from napari_sam_med.config import get_config
from napari_sam_med.preprocessing import apply_intensity
from napari_sam_med.volume.datasets import find_pairs, read_msd
from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.io import write_volume
from training.cases import cases_from_csv
from training.config import load_config
from training.data import load_volumes
from training.sampling import TrainSlices, ValSlices
from training.splits import split_by_patient


def _cfg(**over):
    return load_config(None, [f"data.{k}={v}" for k, v in over.items()]).data


def test_pipeline_is_lps_by_default_channel_first_with_the_inference_presets(synthetic_dataset):
    cases = find_pairs(synthetic_dataset)
    item = load_volumes(cases[:1], _cfg(cache="none")).get(0)
    image, label = np.asarray(item["image"]), np.asarray(item["label"])
    raw, lab = make_volume(0)
    # LPS identity direction: the voxels keep the order the inference reads them in
    expected = apply_intensity(raw, "ct_soft_tissue").transpose(2, 1, 0)
    np.testing.assert_allclose(image[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(label[0], lab.transpose(2, 1, 0))
    assert item["preset"] == "ct_soft_tissue"


def test_bad_orientation_codes_are_refused():
    with pytest.raises(ValueError, match="data.orientation='LPA'"):
        _cfg(orientation="LPA")


def test_pipeline_can_turn_to_ras_as_v1_was_trained(synthetic_dataset):
    cases = find_pairs(synthetic_dataset)
    vols = load_volumes(cases[:1], _cfg(cache="none", orientation="RAS"))
    item = vols.get(0)
    image, label = np.asarray(item["image"]), np.asarray(item["label"])
    assert image.shape == (1, 48, 48, 12) and label.shape == image.shape  # (1, X, Y, Z)
    raw, lab = make_volume(0)
    # LPS identity direction -> RAS flips x and y
    expected = apply_intensity(raw, "ct_soft_tissue").transpose(2, 1, 0)[::-1, ::-1]
    np.testing.assert_allclose(image[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(label[0], lab.transpose(2, 1, 0)[::-1, ::-1])
    assert item["preset"] == "ct_soft_tissue"


def test_bad_cases_are_reported_by_name_and_skipped_or_stop(tmp_path):
    root = tmp_path / "data"
    write_case(root, "good", *make_volume(0))
    img, lab = make_volume(1)
    write_case(root, "empty", img, np.zeros_like(lab))
    write_case(root, "mismatch", img, lab)
    write_volume(
        Volume(lab[:, :40], (1.0, 1.0, 2.5)), root / "mismatch" / "CT_mask.nii.gz", overwrite=True
    )
    write_case(root, "corrupt", img, lab)
    (root / "corrupt" / "CT_image.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    cases = find_pairs(root)
    vols = load_volumes(cases, _cfg(on_bad_case="skip"))
    assert [c.case for c in vols.cases] == ["good/CT"]
    reasons = {s["case"]: s["reason"] for s in vols.skipped}
    assert set(reasons) == {"empty/CT", "mismatch/CT", "corrupt/CT"}
    for name, reason in reasons.items():
        assert reason.startswith(name + ":"), reason
    assert "is empty" in reasons["empty/CT"] and "CT_mask.nii.gz" in reasons["empty/CT"]
    assert "does not match" in reasons["mismatch/CT"]
    assert "corrupt/CT_image.nii.gz" in reasons["corrupt/CT"]
    with pytest.raises(ValueError, match="corrupt|empty|mismatch"):
        load_volumes(cases, _cfg(on_bad_case="stop"))


def test_msd_and_csv_sources(tmp_path, synthetic_dataset):
    entries = [
        {"image": f"P{i}/CT_image.nii.gz", "label": f"P{i}/CT_mask.nii.gz"} for i in range(4)
    ]
    meta = {"labels": {"0": "background", "1": "tumour"}, "modality": {"0": "CT"}}
    (synthetic_dataset / "dataset.json").write_text(json.dumps({**meta, "training": entries}))
    msd, names = read_msd(synthetic_dataset)
    assert len(msd) == 4 and names == {1: "tumour"} and msd[0].modality == "CT"
    rows = ["image,label,patient"] + [
        f"P{i}/CT_image.nii.gz,P{i}/CT_mask.nii.gz,pat{i // 2}" for i in range(4)
    ]
    (synthetic_dataset / "cases.csv").write_text("\n".join(rows) + "\n")
    csv_cases = cases_from_csv(synthetic_dataset / "cases.csv")
    split = split_by_patient(csv_cases, 0.5, seed=1)
    assert len(split["val_patients"]) == 1 and len(split["val"]) == 2


def test_train_samples_are_deterministic_objects_on_the_model_grid(synthetic_dataset):
    cfg = _cfg(cache="memory", objects="components")
    vols = load_volumes(find_pairs(synthetic_dataset), cfg)
    aug = load_config(None).aug
    ds = TrainSlices(vols, cfg, aug, get_config("tiny"), seed=0)
    a, b = ds[3], ds[3]
    assert a["image"].shape == (3, 128, 128) and a["mask"].shape == (1, 128, 128)
    assert a["mask"].sum() >= cfg.min_object_area
    assert a["image"].equal(b["image"]) and a["mask"].equal(b["mask"])
    ds.set_epoch(1)
    assert not ds[3]["mask"].equal(a["mask"]) or not ds[3]["image"].equal(a["image"])
    val = ValSlices(vols, cfg, get_config("tiny"))
    assert len(val) > 0 and {val[i]["label"] for i in range(len(val))} <= {1, 2}


@pytest.mark.shared_data
def test_dicom_series_with_rtstruct_loads(shared_data):
    cases = find_pairs(shared_data / "ibsi_sts_dicom")
    ct = [c for c in cases if c.case == "STS_001/CT"]
    vols = load_volumes(ct, _cfg(cache="none"))
    assert not vols.skipped and np.asarray(vols.get(0)["label"]).sum() > 0
