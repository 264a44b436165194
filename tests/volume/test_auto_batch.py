"""`sam-med auto` over a folder of volumes: labels, QC PNGs and a report; bad files reported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.volume.auto import find_volumes, object_table
from napari_sam_med.volume.geometry import Volume

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def test_find_volumes_skips_labels_and_finds_dicom(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "a_label.nii.gz").write_bytes(b"x")
    (tmp_path / "b_mask.nrrd").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"x")
    found = find_volumes([tmp_path])
    assert [p.name for p in found] == ["a.nii.gz", "series"]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_volumes([tmp_path / "nope"])


def test_object_table_counts_and_volumes() -> None:
    labels = np.zeros((4, 5, 5), np.int32)
    labels[1:3, :2, :2] = 1
    labels[3, 4, 4] = 2
    vol = Volume(np.zeros((4, 5, 5), np.float32), spacing=(2.0, 2.0, 5.0))
    rows = object_table(labels, vol)
    assert rows == [
        {"label": 1, "voxels": 8, "volume_ml": 0.16, "z_first": 1, "z_last": 2},
        {"label": 2, "voxels": 1, "volume_ml": 0.02, "z_first": 3, "z_last": 3},
    ]


@pytest.fixture()
def tiny_ckpt(tmp_path: Path, tiny_model) -> str:
    from napari_sam_med.build import save_checkpoint

    return str(save_checkpoint(tiny_model, tmp_path / "tiny.pt"))


@pytest.mark.slow
def test_auto_batch_over_a_folder(tmp_path: Path, tiny_ckpt: str) -> None:
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(SAMPLE / "ct_phantom.nii.gz", data / "ct.nii.gz")
    shutil.copy(SAMPLE / "ct_phantom_label.nii.gz", data / "ct_label.nii.gz")  # skipped
    (data / "broken.nii.gz").write_bytes(b"not a volume")
    out = tmp_path / "out"
    rc = main(["auto", str(data), "--out-dir", str(out), "--model", tiny_ckpt, "--slices", "20",
               "22", "--points-per-side", "3", "--no-progress", "--pred-iou-thresh", "0",
               "--stability-thresh", "0"])  # fmt: skip
    assert rc == 1  # one volume failed
    report = json.loads((out / "auto_report.json").read_text())
    assert [r["case"] for r in report] == ["broken", "ct"]
    broken, ct = report
    assert broken["status"] == "error" and "broken.nii.gz" in broken["image"] and broken["error"]
    assert ct["status"] in ("ok", "empty") and Path(ct["output"]).is_file()
    assert Path(ct["qc_png"]).is_file() and Path(ct["qc_png"]).stat().st_size > 0
    rows = list(csv.DictReader((out / "auto_report.csv").open()))
    assert [r["case"] for r in rows] == ["broken", "ct"]
    assert int(rows[1]["objects"]) == len(ct["objects"])


def test_auto_needs_exactly_one_output_kind(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="-o FILE"):
        main(["auto", str(SAMPLE / "ct_phantom.nii.gz")])
    with pytest.raises(SystemExit, match="-o takes one image"):
        main(["auto", str(SAMPLE), "-o", str(tmp_path / "x.nii.gz")])
