"""``napari_sam_med.export`` and ``sam-med export``: MSD-style datasets from pairs and sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.export import (
    ExportItem,
    case_name,
    discover_cases,
    export_dataset,
    parse_label_names,
)
from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.io import read_volume, write_volume


def _pair(folder: Path, name: str, spacing=(0.8, 0.8, 2.0)) -> tuple[str, str]:
    rng = np.random.default_rng(len(name))
    img = rng.integers(-100, 100, (3, 10, 12)).astype(np.int16)
    lbl = np.zeros(img.shape, np.uint8)
    lbl[1, 2:5, 3:7] = 1
    lbl[2, 6:8, 6:9] = 2
    folder.mkdir(parents=True, exist_ok=True)
    origin = (-5.0, 3.0, 10.0)
    write_volume(Volume(img, spacing, origin), folder / f"{name}.nrrd")
    write_volume(Volume(lbl, spacing, origin), folder / f"{name}_labels.nii.gz")
    return str(folder / f"{name}.nrrd"), str(folder / f"{name}_labels.nii.gz")


def _session(folder: Path, name: str, image: str | None) -> Path:
    log = {
        "format": "napari-sam-med-session",
        "version": 1,
        "image": {"name": name, "path": image, "shape_zyx": [3, 10, 12]},
        "objects": [{"label": 1, "name": "sarcoma"}, {"label": 2, "name": "oedema"}],
        "events": [{"action": "prompt", "label": 1, "z": 1, "prompt": {"box": [3, 2, 6, 4]}}],
    }
    path = folder / f"{name}_labels.session.json"
    path.write_text(json.dumps(log))
    return path


def test_pairs_and_sessions_round_trip_through_evaluate_discovery(tmp_path: Path) -> None:
    img_a, lbl_a = _pair(tmp_path / "src", "CT 001")
    img_b, _ = _pair(tmp_path / "src", "CT_002")
    log = _session(tmp_path / "src", "CT_002", img_b)
    out = tmp_path / "ds"
    argv = ["export", "--out-dir", str(out), "--pair", img_a, lbl_a, "--session", str(log),
            "--modality", "CT", "--name", "sts"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "sts" and meta["modality"] == {"0": "CT"} and meta["numTraining"] == 2
    assert meta["labels"] == {"0": "background", "1": "sarcoma", "2": "oedema"}
    a, b = meta["training"]
    assert a["image"] == "./imagesTr/CT_001.nii.gz" and "log" not in a
    assert b["log"] == "./logs/CT_002.session.json" and b["label_names"]["2"] == "oedema"
    kept = json.loads((out / "logs" / "CT_002.session.json").read_text())
    assert kept["events"][0]["prompt"]["box"] == [3, 2, 6, 4]
    src, dst = read_volume(img_a), read_volume(out / "imagesTr" / "CT_001.nii.gz")
    np.testing.assert_array_equal(dst.array, src.array)
    np.testing.assert_allclose(dst.spacing, src.spacing, rtol=1e-6)
    np.testing.assert_allclose(dst.origin, src.origin, atol=1e-5)
    lab = read_volume(out / "labelsTr" / "CT_001.nii.gz").array
    np.testing.assert_array_equal(lab, read_volume(lbl_a).array)
    assert not list(out.rglob(".tmp-*"))
    cases, names = discover_cases(out)
    assert [c.name for c in cases] == ["CT_001", "CT_002"] and names[1] == "sarcoma"
    assert cases[0].modality == "CT"


def test_incremental_export_duplicates_and_overwrite(tmp_path: Path) -> None:
    img, lbl = _pair(tmp_path / "src", "a")
    out = tmp_path / "ds"
    export_dataset([ExportItem(img, lbl)], out, label_names={1: "tumour"})
    img2, lbl2 = _pair(tmp_path / "src", "b")
    meta = export_dataset([ExportItem(img2, lbl2)], out)
    assert meta["numTraining"] == 2 and meta["labels"]["1"] == "tumour"
    with pytest.raises(ValueError, match="case a already exported"):
        export_dataset([ExportItem(img, lbl)], out)
    assert export_dataset([ExportItem(img, lbl)], out, overwrite=True)["numTraining"] == 2
    with pytest.raises(ValueError, match="two inputs give case name 'b'"):
        export_dataset([ExportItem(img2, lbl2), ExportItem(img2, lbl2)], out, overwrite=True)
    with pytest.raises(ValueError, match="modality is CT"):
        export_dataset([ExportItem(img, lbl)], tmp_path / "m", modality="CT")
        export_dataset([ExportItem(img2, lbl2)], tmp_path / "m", modality="MR")


def test_bad_inputs_name_the_file(tmp_path: Path, capsys) -> None:
    img, lbl = _pair(tmp_path / "src", "a")
    _, other = _pair(tmp_path / "src", "b", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="does not match image"):
        export_dataset([ExportItem(img, other)], tmp_path / "ds")
    empty = tmp_path / "src" / "empty.nii.gz"
    write_volume(Volume(np.zeros((3, 10, 12), np.uint8), (0.8, 0.8, 2.0), (-5.0, 3.0, 10.0)), empty)
    with pytest.raises(ValueError, match="empty.nii.gz: label is empty"):
        export_dataset([ExportItem(img, str(empty))], tmp_path / "ds")
    no_path = _session(tmp_path / "src", "mem", None)
    assert main(["export", "--out-dir", str(tmp_path / "ds"), "--session", str(no_path)]) == 2
    assert "records no image path" in capsys.readouterr().err
    (tmp_path / "src" / "x.session.json").write_text('{"format": "other"}')
    assert main(["export", "--out-dir", str(tmp_path / "ds"),
                 "--session", str(tmp_path / "src" / "x.session.json")]) == 2  # fmt: skip
    assert "not a napari-sam-med session log" in capsys.readouterr().err
    nolabels = _session(tmp_path / "src", "orphan", img)
    assert main(["export", "--out-dir", str(tmp_path / "ds"), "--session", str(nolabels)]) == 2
    assert "no saved labels beside it" in capsys.readouterr().err
    assert main(["export", "--out-dir", str(tmp_path / "ds")]) == 2
    assert "give --pair IMAGE LABEL or --session" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected VALUE=NAME"):
        parse_label_names(["0=background"])
    assert parse_label_names(["1=liver tumour"]) == {1: "liver tumour"}
    assert case_name("/x/STS 001_0000.nii.gz") == "STS_001"


def test_in_memory_item_with_progress(tmp_path: Path) -> None:
    img = np.arange(3 * 10 * 12, dtype=np.int16).reshape(3, 10, 12)
    lbl = np.zeros(img.shape, np.uint16)
    lbl[1, 2:5, 3:7] = 1
    vol = Volume(img, (0.8, 0.8, 2.0), (1.0, 2.0, 3.0))
    seen = []
    meta = export_dataset(
        [ExportItem("viewer image", "viewer labels", "mem", {1: "lesion"}, None, vol, lbl)],
        tmp_path / "ds",
        progress=lambda *a: seen.append(a),
    )
    assert seen == [(1, 1, "mem")] and meta["training"][0]["source_image"] == "viewer image"
    back = read_volume(tmp_path / "ds" / "labelsTr" / "mem.nii.gz")
    np.testing.assert_array_equal(back.array, lbl)
    np.testing.assert_allclose(back.origin, (1.0, 2.0, 3.0), atol=1e-5)
    with pytest.raises(ValueError, match=r"viewer labels: labels have shape \(2, 10, 12\)"):
        export_dataset([ExportItem("i", "viewer labels", "m2", {}, None, vol, lbl[:2])],
                       tmp_path / "ds")  # fmt: skip
