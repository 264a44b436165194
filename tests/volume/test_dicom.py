"""DICOM series selection, RTSTRUCT rasterisation, and the real STS_001 DICOM case."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam_med.volume.dicom import list_dicom_series, rasterize_polygons
from napari_sam_med.volume.io import (
    Volume,
    VolumeError,
    check_label_matches,
    index_to_world,
    read_rtstruct,
    read_volume,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
FRAME_UID = "1.2.826.0.1.3680043.8.498.2"


def write_series(folder: Path, uid: str, description: str, n_slices: int, value: int = 0) -> Volume:
    """Write a tiny axial CT series (6 x 8 pixels) with SimpleITK; return what it should read as."""
    folder.mkdir(exist_ok=True)
    origin, spacing = (-10.0, 20.0, 100.0), (0.5, 0.75, 2.0)
    for k in range(n_slices):
        image = sitk.GetImageFromArray(np.full((6, 8), value + k, np.int16))
        image.SetSpacing(spacing[:2])
        tags = {
            "0008|0060": "CT",
            "0008|103e": description,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000e": uid,
            "0020|000d": STUDY_UID,
            "0020|0052": FRAME_UID,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(str(v) for v in (origin[0], origin[1], origin[2] + 2.0 * k)),
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, text in tags.items():
            image.SetMetaData(tag, text)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"))
        writer.Execute(image)
    array = (value + np.arange(n_slices, dtype=np.int16))[:, None, None] * np.ones((1, 6, 8))
    return Volume(array.astype(np.int16), spacing, origin)


def test_single_series(tmp_path: Path) -> None:
    expected = write_series(tmp_path / "ct", "1.2.3.4.10", "abdomen", 4, value=7)
    vol = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, expected.array)
    check_label_matches(vol, expected)
    assert vol.metadata["modality"] == "CT" and vol.metadata["series_description"] == "abdomen"
    assert vol.metadata["frame_of_reference_uid"] == FRAME_UID
    one_file = sorted((tmp_path / "ct").iterdir())[2]
    np.testing.assert_array_equal(read_volume(one_file).array, expected.array)


def test_several_series_need_a_uid(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_series(folder, "1.2.3.4.10", "abdomen", 4)
    write_series(folder, "1.2.3.4.20", "thorax", 3, value=100)
    assert sorted((s.uid, len(s.files)) for s in list_dicom_series(folder)) == [
        ("1.2.3.4.10", 4),
        ("1.2.3.4.20", 3),
    ]
    with pytest.raises(VolumeError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "holds 2 DICOM series" in message and str(folder) in message
    assert "1.2.3.4.10 [CT] 'abdomen': 4 slices" in message
    assert "1.2.3.4.20 [CT] 'thorax': 3 slices" in message
    vol = read_volume(folder, series_uid="1.2.3.4.20")
    assert vol.array.shape == (3, 6, 8) and vol.array[0, 0, 0] == 100
    with pytest.raises(VolumeError, match="no series with UID '9.9'; found: 1.2.3.4.10"):
        read_volume(folder, series_uid="9.9")


def test_empty_dicom_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    with pytest.raises(VolumeError, match="empty: no DICOM image series found"):
        read_volume(tmp_path / "empty")


# --- polygon filling ----------------------------------------------------------------------------


def test_rasterize_square_with_hole_hand_computed() -> None:
    outer = np.array([[1, 1], [4, 1], [4, 4], [1, 4]], float)
    mask = rasterize_polygons([outer], (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[1:4, 1:4] = True  # centres on the low edges are in, on the high edges out
    np.testing.assert_array_equal(mask, expected)
    hole = np.array([[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]])
    expected[2, 2] = False
    np.testing.assert_array_equal(rasterize_polygons([outer, hole], (6, 6)), expected)


def test_rasterize_triangle_and_edges() -> None:
    triangle = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [0.0, 0.0]])  # closing point repeated
    mask = rasterize_polygons([triangle], (8, 8))
    ys, xs = np.nonzero(mask)
    assert np.all(xs + ys < 6) and mask.sum() == 21  # 6 + 5 + ... + 1 centres
    beyond = rasterize_polygons([triangle + [-10.0, 5.0]], (8, 8))
    assert not beyond.any()
    assert not rasterize_polygons([], (3, 3)).any()


# --- RTSTRUCT -----------------------------------------------------------------------------------


def write_rtstruct(path: Path, rois: dict[str, list[np.ndarray]], frame: str = FRAME_UID) -> None:
    """A minimal RTSTRUCT with closed planar contours (each an ``(N, 3)`` LPS array)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "RTSTRUCT"
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame
    ds.ReferencedFrameOfReferenceSequence = [frame_item]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = []
        for points in contours:
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.4f}" for v in np.asarray(points).ravel()]
            roi_contour.ContourSequence.append(item)
        ds.ROIContourSequence.append(roi_contour)
    try:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


@pytest.fixture()
def reference() -> Volume:
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # swapped in-plane axes, z flipped
    return Volume(
        np.zeros((5, 10, 12), np.int16), (0.8, 0.5, 2.0), (10.0, -5.0, 40.0), direction,
        metadata={"frame_of_reference_uid": FRAME_UID},
    )  # fmt: skip


def _square(vol: Volume, lo: float, hi: float, k: int) -> np.ndarray:
    """The LPS corners of the index-space square [lo, hi]^2 on slice k."""
    corners = [[lo, lo, k], [hi, lo, k], [hi, hi, k], [lo, hi, k]]
    return index_to_world(vol, np.array(corners, float))


def test_rtstruct_with_hole(tmp_path: Path, reference: Volume) -> None:
    path = tmp_path / "RS.dcm"
    contours = [
        _square(reference, 1, 7, 2),
        _square(reference, 3, 5, 2),
        _square(reference, 2, 4, 3),
    ]
    write_rtstruct(path, {"GTV": contours, "Body": [_square(reference, 0, 9, 1)]})
    labels = read_rtstruct(path, reference, roi_name="gtv")
    assert labels.dtype == np.uint8 and labels.shape == (5, 10, 12)
    expected = np.zeros((5, 10, 12), np.uint8)
    expected[2, 1:7, 1:7] = 1
    expected[2, 3:5, 3:5] = 0
    expected[3, 2:4, 2:4] = 1
    np.testing.assert_array_equal(labels, expected)
    with pytest.raises(
        VolumeError, match=r"holds 2 ROIs, choose one with roi_name: \['Body', 'GTV'\]"
    ):
        read_rtstruct(path, reference)
    with pytest.raises(VolumeError, match=r"no ROI named 'Tumour'; available: \['Body', 'GTV'\]"):
        read_rtstruct(path, reference, roi_name="Tumour")


def test_rtstruct_errors(tmp_path: Path, reference: Volume) -> None:
    other_frame = tmp_path / "other.dcm"
    write_rtstruct(other_frame, {"GTV": [_square(reference, 1, 4, 1)]}, frame="1.2.3")
    with pytest.raises(VolumeError, match=r"other\.dcm: drawn in frame of reference \['1\.2\.3'\]"):
        read_rtstruct(other_frame, reference)
    off_grid = tmp_path / "off.dcm"
    write_rtstruct(off_grid, {"GTV": [_square(reference, 1, 4, 40)]})
    with pytest.raises(VolumeError, match="none of the 1 contours lies on a slice"):
        read_rtstruct(off_grid, reference)
    write_series(tmp_path / "ct", "1.2.3.4.10", "abdomen", 2)
    image_file = next((tmp_path / "ct").iterdir())
    with pytest.raises(VolumeError, match=r"not an RTSTRUCT \(Modality='CT'\)"):
        read_rtstruct(image_file, reference)
    (tmp_path / "junk.dcm").write_text("junk")
    with pytest.raises(VolumeError, match=r"junk\.dcm: cannot read the RTSTRUCT"):
        read_rtstruct(tmp_path / "junk.dcm", reference)


def test_rtstruct_without_pydicom(
    tmp_path: Path, reference: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'napari-sam-med\[dicom\]'"):
        read_rtstruct(tmp_path / "RS.dcm", reference)


# --- the real STS_001 case (../shared/data) -----------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize("modality", ["CT", "MR_T1"])
def test_sts001_dicom_matches_nifti(shared_data: Path, modality: str) -> None:
    """DICOM image + RTSTRUCT reproduce the IBSI NIfTI export (same grid, Dice 1.0 measured)."""
    case = shared_data / "ibsi_sts_dicom" / "STS_001" / modality
    image = read_volume(case / "image")
    assert image.array.shape[0] == 59 and image.metadata["modality"] == modality[:2]
    nifti = read_volume(shared_data / "ibsi_sts" / "STS_001" / f"{modality}_image.nii.gz")
    check_label_matches(nifti, image)  # same geometry (within NIfTI's float32 precision)
    np.testing.assert_array_equal(nifti.array, image.array)
    mask = read_volume(shared_data / "ibsi_sts" / "STS_001" / f"{modality}_mask.nii.gz")
    check_label_matches(mask, image)
    rois = {"CT": "GTV_Mass_CT", "MR_T1": None}
    labels = read_rtstruct(case / "mask" / "RS.dcm", image, roi_name=rois[modality]) > 0
    truth = mask.array > 0
    dice = 2 * np.count_nonzero(labels & truth) / (labels.sum() + truth.sum())
    assert dice > 0.99, f"RTSTRUCT vs NIfTI mask Dice {dice:.4f}"
