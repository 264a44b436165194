"""The one dataset discovery (``volume/datasets.py``): every layout, patient and modality rules,
bad input named; and its two callers' adaptations (``export.discover_cases``, ``training``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from napari_sam_med.export import EvalCase, discover_cases
from napari_sam_med.volume.datasets import (
    Case,
    find_pairs,
    modality_from_name,
    msd_label_names,
    patient_of,
    read_csv,
    read_msd,
    strip_image_suffix,
)


def _touch(root: Path, *names: str) -> None:
    """Empty files: discovery reads names only (the files are read later, by their users)."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def _rows(cases: list[Case], root: Path) -> list[tuple]:
    def rel(p: str | None) -> str | None:
        return None if p is None else Path(p).relative_to(root).as_posix()

    return [(c.case, c.patient, rel(c.image), rel(c.label), c.modality) for c in cases]


# ------------------------------------------------------------------------ names
def test_modality_patient_and_suffix_rules() -> None:
    names = ("STS_001/CT", "x_MR_T1", "p/flair", "a.PET", "T1c")
    assert [modality_from_name(n) for n in names] == ["CT", "MR", "MR", "PET", "MR"]
    assert modality_from_name("ctx/abdomen") is None  # a token, not a substring
    assert patient_of(Path("STS_001/CT/image/x.nii.gz"), "STS_001/CT") == "STS_001"
    assert patient_of(Path("images/x.nii.gz"), "x") == "x"  # image folders are not patients
    assert [strip_image_suffix(s) for s in ("A_image", "B_img", "C_0000", "D_0000_image", "E")] == [
        "A", "B", "C", "D_0000", "E",
    ]  # fmt: skip
    assert msd_label_names({"0": "background", "1": "tumour"}) == {1: "tumour"}
    v2 = {"background": 0, "tumour": 1, "oedema": 2}  # nnU-Net v2
    assert msd_label_names(v2) == {1: "tumour", 2: "oedema"}
    assert msd_label_names(None) == {}


# ------------------------------------------------------------------------- MSD
def _msd(root: Path, **meta: object) -> Path:
    _touch(root, "imagesTr/a.nii.gz", "labelsTr/a.nii.gz", "imagesTs/t.nii.gz")
    base = {"labels": {"0": "background", "1": "tumour"}, "modality": {"0": "MR"},
            "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
            "test": ["./imagesTs/t.nii.gz"]}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps({**base, **meta}))
    return root / "dataset.json"


def test_msd_training_and_test_entries(tmp_path: Path) -> None:
    path = _msd(tmp_path)
    cases, names = read_msd(tmp_path, check_files=True)  # the folder holding dataset.json
    assert names == {1: "tumour"}
    assert _rows(cases, tmp_path) == [("a", "a", "imagesTr/a.nii.gz", "labelsTr/a.nii.gz", "MR")]
    every, _ = read_msd(path, require_labels=False)
    assert [(c.case, c.label is None) for c in every] == [("a", False), ("t", True)]
    _msd(tmp_path, modality=None, channel_names={"0": "CT"}, labels={"background": 0, "gtv": 1})
    cases, names = read_msd(path)
    assert cases[0].modality == "CT" and names == {1: "gtv"}
    _msd(tmp_path, modality={"0": ""})
    assert read_msd(path)[0][0].modality is None


def test_msd_bad_input_is_named(tmp_path: Path) -> None:
    missing = {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/zz.nii.gz"}
    path = _msd(tmp_path, training=[missing])
    assert str(read_msd(path)[0][0].label).endswith("zz.nii.gz")  # training checks files later
    with pytest.raises(ValueError, match=r"dataset.json: training entry 0: .*zz.nii.gz does not"):
        read_msd(path, check_files=True)
    _msd(tmp_path, training=[{"image": "./imagesTr/a.nii.gz"}])
    with pytest.raises(ValueError, match=r"training entry 0 needs 'image' and 'label', got \{"):
        read_msd(path)
    _msd(tmp_path, test=[{"label": "x"}])
    with pytest.raises(ValueError, match=r"test entry 0 needs 'image'"):
        read_msd(path, require_labels=False)
    _msd(tmp_path, training=[])
    with pytest.raises(ValueError, match=r"dataset.json: no cases in 'training'"):
        read_msd(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset.json: cannot read the dataset.json"):
        read_msd(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"dataset.json: expected a JSON object, got list"):
        read_msd(path)


# ---------------------------------------------------------------- folder of pairs
def test_suffixed_pairs_patients_and_modalities(tmp_path: Path, caplog) -> None:
    _touch(
        tmp_path,
        "STS_001/CT_image.nii.gz", "STS_001/CT_mask.nii.gz",
        "STS_001/MR_T1_image.nii.gz", "STS_001/MR_T1_mask.nii.gz",
        "B.nrrd", "B_seg.mha", "C_img.nii", "C_label.nii", "C_mask.nii",
        "D_image.nii.gz",  # no label
        "._E_image.nii.gz", "._E_mask.nii.gz", "F.dcm", "F_mask.dcm", "notes.txt",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        cases = find_pairs(tmp_path)
    assert _rows(cases, tmp_path) == [
        ("B", "B", "B.nrrd", "B_seg.mha", None),
        ("C", "C", "C_img.nii", "C_mask.nii", None),  # _mask before _label
        ("STS_001/CT", "STS_001", "STS_001/CT_image.nii.gz", "STS_001/CT_mask.nii.gz", "CT"),
        ("STS_001/MR_T1", "STS_001", "STS_001/MR_T1_image.nii.gz", "STS_001/MR_T1_mask.nii.gz",
         "MR"),
    ]  # fmt: skip
    assert "D_image.nii.gz: no matching label file; not used" in caplog.text
    unlabelled = find_pairs(tmp_path, require_labels=False)
    assert [(c.case, c.label) for c in unlabelled if c.case == "D"] == [("D", None)]


def test_image_and_label_folders_and_dicom_series(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "P1/images/x.nii.gz", "P1/labels/x.nii.gz",
        "P2/imgs/z_0000.nii.gz", "P2/masks/z.nii.gz",
        "P3/imagesTr/k.nii.gz", "P3/labels/k.nii.gz", "P3/labelsTr/k.nii.gz",
        "S1/CT/image/1.dcm", "S1/CT/image/2.dcm", "S1/CT/mask/RS.dcm",
        "S1/MR/image/1.dcm", "S1/MR/mask/a.dcm", "S1/MR/mask/b.dcm",  # two label files
    )  # fmt: skip
    assert _rows(find_pairs(tmp_path, require_labels=False), tmp_path) == [
        ("P1/x", "P1", "P1/images/x.nii.gz", "P1/labels/x.nii.gz", None),
        ("P2/z", "P2", "P2/imgs/z_0000.nii.gz", "P2/masks/z.nii.gz", None),
        ("P3/k", "P3", "P3/imagesTr/k.nii.gz", "P3/labelsTr/k.nii.gz", None),  # its twin first
        ("S1/CT", "S1", "S1/CT/image", "S1/CT/mask/RS.dcm", "CT"),
        ("S1/MR", "S1", "S1/MR/image", None, "MR"),
    ]  # fmt: skip
    assert [c.case for c in find_pairs(tmp_path, dicom_series=False)] == ["P1/x", "P2/z", "P3/k"]


def test_folder_bad_input_is_named(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"file.txt: not a folder; expected a folder of image/"):
        find_pairs(tmp_path / "file.txt")
    _touch(tmp_path, "empty/notes.txt", "empty/lonely.nii.gz")
    with pytest.raises(ValueError, match=r"empty: found no image/label pairs \(expected imagesTr/"):
        find_pairs(tmp_path / "empty")


# -------------------------------------------------------------------- CSV table
def _table(root: Path, *rows: str, name: str = "cases.csv") -> Path:
    (root / name).write_text("\n".join(rows) + "\n")
    return root / name


def test_csv_columns_defaults_and_options(tmp_path: Path) -> None:
    _touch(tmp_path, "d/CT_image.nii.gz", "d/CT_mask.nii.gz", "d/x_T1.nii.gz", "d/u.nii.gz")
    table = _table(
        tmp_path / "d",
        "image,label,patient,case,modality,note",
        "CT_image.nii.gz,CT_mask.nii.gz,P1,,,a",
        " x_T1.nii.gz , ,,P2/x,mr,",  # cells are stripped; no label: unlabelled
        "u.nii.gz,,,,,,extra",  # a row longer than the header
    )
    assert _rows(read_csv(table, require_labels=False), tmp_path) == [
        ("CT_image", "P1", "d/CT_image.nii.gz", "d/CT_mask.nii.gz", "CT"),
        ("P2/x", "P2/x", "d/x_T1.nii.gz", None, "mr"),
        ("u", "u", "d/u.nii.gz", None, None),
    ]  # fmt: skip
    (tmp_path / "d/more").mkdir()
    table = _table(tmp_path / "d/more", "image,label", "../x_T1.nii.gz,../CT_mask.nii.gz")
    named = read_csv(table)[0]
    assert (named.case, named.modality) == ("x_T1", "MR")  # the modality read from the name
    bench = read_csv(table, check_files=True, keep_suffix=True, modality_from_names=False)[0]
    assert (bench.case, bench.modality) == ("x_T1.nii.gz", None)
    assert bench.image == str(tmp_path / "d/x_T1.nii.gz")


def test_csv_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"none.csv: cannot read the CSV case table"):
        read_csv(tmp_path / "none.csv")
    (tmp_path / "latin.csv").write_bytes(b"image,label\n\xe9\xff.nii.gz,x\n")
    with pytest.raises(ValueError, match=r"latin.csv: cannot read the CSV case table"):
        read_csv(tmp_path / "latin.csv")
    table = _table(tmp_path, "image,mask", "a.nii.gz,b.nii.gz")
    with pytest.raises(ValueError, match=r"column\(s\) image, label, got \['image', 'mask'\]"):
        read_csv(table)
    assert read_csv(table, require_labels=False)[0].label is None
    with pytest.raises(ValueError, match=r"cases.csv: expected a CSV .* image, label, got no rows"):
        read_csv(_table(tmp_path, "image,label"))
    table = _table(tmp_path, "image,label", "a.nii.gz,b.nii.gz", ",b.nii.gz")
    with pytest.raises(ValueError, match=r"cases.csv: row 3 has an empty 'image'; expected a file"):
        read_csv(table, require_labels=False)
    table = _table(tmp_path, "image,label", "a.nii.gz,")
    with pytest.raises(ValueError, match=r"cases.csv: row 2 has an empty 'label'"):
        read_csv(table)
    assert read_csv(table, require_labels=False)[0].label is None
    table = _table(tmp_path, "image,label", "a.nii.gz,b.nii.gz")
    assert len(read_csv(table)) == 1  # files are the caller's to check by default
    _touch(tmp_path, "a.nii.gz")
    with pytest.raises(ValueError, match=r"cases.csv: row 2: .*b.nii.gz does not exist"):
        read_csv(table, check_files=True)


# --------------------------------------------------------------------- callers
def test_discover_cases_adapts_for_evaluation(tmp_path: Path) -> None:
    """``sam-med evaluate`` reads label volumes only: no DICOM series, modality from the MSD
    ``dataset.json`` (a folder's is guessed later), missing files an error."""
    _touch(tmp_path, "STS_1/CT_image.nii.gz", "STS_1/CT_mask.nii.gz", "S2/CT/image/1.dcm",
           "S2/CT/mask/RS.dcm")  # fmt: skip
    cases, names = discover_cases(tmp_path)
    assert names == {}
    assert cases == [
        EvalCase("STS_1/CT", str(tmp_path / "STS_1/CT_image.nii.gz"),
                 str(tmp_path / "STS_1/CT_mask.nii.gz"), None)
    ]  # fmt: skip
    _msd(tmp_path / "msd")
    cases, names = discover_cases(tmp_path / "msd")
    assert [(c.name, c.modality) for c in cases] == [("a", "MR")] and names == {1: "tumour"}
    (tmp_path / "msd" / "labelsTr" / "a.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"training entry 0: .*a.nii.gz does not exist"):
        discover_cases(tmp_path / "msd" / "dataset.json")
    with pytest.raises(ValueError, match=r"nope: expected a dataset.json or a folder"):
        discover_cases(tmp_path / "nope")


def test_training_sources_use_the_shared_rules(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from training.config import load_config
    from training.run_setup import find_cases

    _touch(tmp_path, "STS_1/CT_image.nii.gz", "STS_1/CT_mask.nii.gz", "STS_2/MR_image.nii.gz",
           "STS_2/MR_mask.nii.gz")  # fmt: skip
    cfg = load_config(None, [f"data.path={tmp_path}", "data.source=folder"])
    assert find_cases(cfg.data) == find_pairs(tmp_path)
    path = _msd(tmp_path / "msd")
    cfg = load_config(None, [f"data.path={path}", "data.source=msd"])
    assert find_cases(cfg.data) == read_msd(path)[0]


def test_csv_callers_adapt_the_shared_reader(tmp_path: Path) -> None:
    """The 3D benchmark keeps file names and lets a default modality apply; training drops
    the suffix, reads the modality from the name and allows unlabelled rows."""
    pytest.importorskip("monai")
    from napari_sam_med.bench3d.cases import load_cases
    from training.cases import cases_from_csv

    _touch(tmp_path, "P1/MR_T1_image.nii.gz", "P1/MR_T1_mask.nii.gz", "P2/CT_image.nii.gz")
    table = _table(tmp_path, "image,label,patient", "P1/MR_T1_image.nii.gz,P1/MR_T1_mask.nii.gz,P1")
    bench = load_cases(table, default_modality="CT")
    assert bench == [
        EvalCase("MR_T1_image.nii.gz", str(tmp_path / "P1/MR_T1_image.nii.gz"),
                 str(tmp_path / "P1/MR_T1_mask.nii.gz"), "CT")
    ]  # fmt: skip
    table = _table(tmp_path, "image,label", "P1/MR_T1_image.nii.gz,P1/MR_T1_mask.nii.gz",
                   "P2/CT_image.nii.gz,")  # fmt: skip
    assert [(c.case, c.patient, c.modality, c.label is None) for c in cases_from_csv(table)] == [
        ("MR_T1_image", "MR_T1_image", "MR", False), ("CT_image", "CT_image", "CT", True),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"row 3 has an empty 'label'"):
        load_cases(table)
