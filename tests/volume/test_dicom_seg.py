"""DICOM SEG and RTSTRUCT writers/readers: exact round trips, refusals, standard validators."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
pydicom = pytest.importorskip("pydicom")

from dicom_fakes import ct_phantom, write_ct_series  # noqa: E402

from napari_sam_med.volume.dicom import read_rtstruct  # noqa: E402
from napari_sam_med.volume.dicom_seg import SegmentInfo, write_seg  # noqa: E402
from napari_sam_med.volume.dicom_seg_read import read_seg  # noqa: E402
from napari_sam_med.volume.dicom_source import check_series  # noqa: E402
from napari_sam_med.volume.io import VolumeError, read_volume, write_volume  # noqa: E402
from napari_sam_med.volume.rtstruct_out import write_rtstruct  # noqa: E402

SHAPE = (14, 40, 36)
SEGMENTS = [SegmentInfo(1, "tumour", (255, 0, 0)), SegmentInfo(4, "node", (0, 0, 255))]


@pytest.fixture()
def ct(tmp_path: Path):
    arr = ct_phantom(SHAPE)
    write_ct_series(tmp_path / "ct", arr)
    vol = read_volume(tmp_path / "ct")
    labels = np.zeros(SHAPE, np.uint8)
    labels[arr > 150] = 1
    labels[(arr < -40) & (arr > -300)] = 4  # a second object with a non-contiguous value
    assert (labels == 1).any() and (labels == 4).any()
    return vol, labels


def test_seg_round_trip_exact_with_names_and_colours(ct, tmp_path: Path) -> None:
    vol, labels = ct
    out = write_seg(labels, vol, tmp_path / "seg.dcm", SEGMENTS)
    back = read_seg(out, vol)
    assert int((back.labels != labels).sum()) == 0
    assert back.names == {1: "tumour", 4: "node"}
    assert back.colors[1] == (255, 0, 0) and back.colors[4] == (0, 0, 255)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == vol.metadata["frame_of_reference_uid"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.metadata["series_instance_uid"]
    seg1 = ds.SegmentSequence[0]
    assert seg1.SegmentAlgorithmType == "SEMIAUTOMATIC"
    ident = seg1.SegmentationAlgorithmIdentificationSequence[0]
    assert ident.AlgorithmName == "napari-sam-med"
    # one frame per slice that holds any voxel of a segment, no more
    expected = sum(int((labels == s.label).any(axis=(1, 2)).sum()) for s in SEGMENTS)
    assert int(ds.NumberOfFrames) == expected
    assert not list(tmp_path.glob(".tmp-*"))


def test_seg_records_the_model(ct, tmp_path: Path, tiny_model) -> None:
    from napari_sam_med.volume.cache import model_weights_id
    from napari_sam_med.volume.dicom_seg import algorithm_for

    vol, labels = ct
    out = write_seg(labels, vol, tmp_path / "seg.dcm", SEGMENTS, algorithm_for(tiny_model))
    ident = pydicom.dcmread(out).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "model=tiny" in ident.AlgorithmParameters
    assert model_weights_id(tiny_model) in ident.AlgorithmParameters


def test_same_content_same_uid_and_overwrite_policy(ct, tmp_path: Path) -> None:
    vol, labels = ct
    a = write_seg(labels, vol, tmp_path / "a.dcm", SEGMENTS)
    b = write_seg(labels, vol, tmp_path / "b.dcm", SEGMENTS)
    uid = pydicom.dcmread(a).SOPInstanceUID
    assert uid == pydicom.dcmread(b).SOPInstanceUID
    with pytest.raises(VolumeError, match="already exists; pass --overwrite"):
        write_seg(labels, vol, a, SEGMENTS)
    changed = labels.copy()
    changed[changed == 4] = 0
    write_seg(changed, vol, a, SEGMENTS[:1], overwrite=True)
    assert pydicom.dcmread(a).SOPInstanceUID != uid


def test_refusals_before_writing(ct, tmp_path: Path) -> None:
    vol, labels = ct
    out = tmp_path / "x.dcm"
    with pytest.raises(VolumeError, match=r"'empty' \(label 7\) has no voxels"):
        write_seg(labels, vol, out, [*SEGMENTS, SegmentInfo(7, "empty")])
    with pytest.raises(VolumeError, match="label shape"):
        write_seg(labels[:-1], vol, out, SEGMENTS)
    with pytest.raises(VolumeError, match="no objects"):
        write_seg(np.zeros_like(labels), vol, out)
    nifti = read_volume(write_volume(vol, tmp_path / "ct.nii.gz"))
    for writer in (write_seg, write_rtstruct):
        with pytest.raises(VolumeError, match=r"not a DICOM series\); write the labels as \.nii"):
            writer(labels, nifti, out, SEGMENTS)
    assert not out.exists()


def test_grid_of_other_series_is_refused(ct, tmp_path: Path) -> None:
    vol, labels = ct
    shifted = read_volume(tmp_path / "ct")
    shifted.origin = (vol.origin[0], vol.origin[1], vol.origin[2] + 1.0)  # half a slice off
    with pytest.raises(VolumeError, match="do not lie on the labels' grid"):
        write_seg(labels, shifted, tmp_path / "x.dcm", SEGMENTS)
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize(
    "kind, message",
    [("uneven", "unevenly spaced"), ("orientation", "mixed slice orientations"),
     ("frames", "frames of reference")],
)  # fmt: skip
def test_bad_series_are_refused_with_their_name(tmp_path: Path, kind: str, message: str) -> None:
    arr = ct_phantom((6, 8, 8))
    zs = [0.0, 2.0, 4.0, 8.0, 10.0, 12.0] if kind == "uneven" else None
    files = write_ct_series(tmp_path / "s", arr, positions_z=zs)
    datasets = [pydicom.dcmread(f) for f in files]
    if kind == "orientation":
        datasets[3].ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    if kind == "frames":
        datasets[2].FrameOfReferenceUID = "1.2.3.999"
    with pytest.raises(VolumeError, match=message) as info:
        check_series(datasets, "series 1.2.826.x")
    assert "series 1.2.826.x" in str(info.value)


def test_rtstruct_round_trip(ct, tmp_path: Path) -> None:
    vol, labels = ct
    out = write_rtstruct(labels, vol, tmp_path / "rt.dcm", SEGMENTS)
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["tumour", "node"]
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence] == [[255, 0, 0], [0, 0, 255]]
    assert ds.StructureSetROISequence[0].ROIGenerationAlgorithm == "SEMIAUTOMATIC"
    for s in SEGMENTS:
        back = read_rtstruct(out, vol, s.name).astype(bool)
        truth = labels == s.label
        dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
        assert dice >= 0.97, (s.name, dice)


# ------------------------------------------------------------------ standard validators
def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return {ln.strip() for ln in lines if ln.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_dciodvfy_reports_no_new_errors(ct, tmp_path: Path) -> None:
    vol, labels = ct
    source_errors = _dciodvfy_errors(next((tmp_path / "ct").glob("*.dcm")))
    for writer, name in ((write_seg, "seg.dcm"), (write_rtstruct, "rt.dcm")):
        out = writer(labels, vol, tmp_path / name, SEGMENTS)
        assert _dciodvfy_errors(out) - source_errors == set(), name


def test_dcmqi_reads_our_seg_back(ct, tmp_path: Path) -> None:
    tool = shutil.which("segimage2itkimage") or shutil.which(
        "segimage2itkimage", path=str(Path(__import__("sys").executable).parent)
    )
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is missing (pip install dcmqi)")
    vol, labels = ct
    out = write_seg(labels, vol, tmp_path / "seg.dcm", SEGMENTS)
    assert dcmqi_labels(tool, out, vol, tmp_path / "qi") == {1: labels == 1, 2: labels == 4}


def dcmqi_labels(tool: str, seg: Path, ref, folder: Path) -> dict:
    """dcmqi's segment masks (by segment number) pasted onto ``ref``'s grid, compared as
    bool arrays (a dict compares equal when the arrays are equal)."""
    from napari_sam_med.volume.geometry import world_to_index

    folder.mkdir()
    subprocess.run([tool, "--inputDICOM", str(seg), "--outputDirectory", str(folder), "-t",
                    "nifti"], check=True, capture_output=True, timeout=120)  # fmt: skip
    result = {}
    for f in sorted(folder.glob("*.nii.gz")):
        part = read_volume(f)
        k0 = int(round(float(world_to_index(ref, np.asarray(part.origin))[2])))
        full = np.zeros(ref.array.shape, bool)
        full[k0 : k0 + part.array.shape[0]] = part.array > 0
        result[int(f.name.split(".")[0])] = _Mask(full)
    return result


class _Mask:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __eq__(self, other: object) -> bool:
        return bool(np.array_equal(self.a, np.asarray(other)))

    def __repr__(self) -> str:
        return f"mask({int(self.a.sum())} voxels)"


@pytest.mark.shared_data
def test_real_ibsi_series(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "ibsi_sts_dicom" / "STS_001" / "MR_T1" / "image"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    vol = read_volume(folder)
    labels = np.zeros(vol.array.shape, np.uint8)
    nz, ny, nx = labels.shape
    labels[nz // 3 : nz // 2, ny // 3 : ny // 2, nx // 3 : nx // 2] = 1
    seg = write_seg(labels, vol, tmp_path / "seg.dcm", [SegmentInfo(1, "box")])
    assert int((read_seg(seg, vol).labels != labels).sum()) == 0
    rt = write_rtstruct(labels, vol, tmp_path / "rt.dcm", [SegmentInfo(1, "box")])
    np.testing.assert_array_equal(read_rtstruct(rt, vol, "box"), labels)
    if shutil.which("dciodvfy"):
        source_errors = _dciodvfy_errors(next(folder.glob("*.dcm")))
        assert _dciodvfy_errors(seg) - source_errors == set()
        assert _dciodvfy_errors(rt) - source_errors == set()
