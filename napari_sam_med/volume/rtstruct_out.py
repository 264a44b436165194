"""RTSTRUCT out: a label map as closed planar contours, one ROI per object (pydicom + skimage).

Why not rt-utils: it pulls OpenCV (tens of MB, plus libGL on Linux) for its contours, reads
the series again from disk itself and fixes the dataset layout we would need to change
(deterministic UIDs, algorithm identification). We already re-read the checked source
headers (:mod:`~napari_sam_med.volume.dicom_source`), so we build the RT Structure Set IOD
with pydicom and take the contours from ``skimage.measure.find_contours`` (marching squares
at level 0.5). Those contours run between every inside and outside pixel centre, so
filling them by pixel centres (:func:`~napari_sam_med.volume.dicom.read_rtstruct`) gives back
the label map; collinear points are dropped.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .dicom import DICOM_INSTALL_HINT
from .dicom_seg import (
    SOFTWARE,
    AlgorithmInfo,
    SegmentInfo,
    _safe_lo,
    _series_number,
    content_digest,
    prepare_output,
)
from .dicom_source import (
    content_uid,
    import_pydicom,
    write_dataset_atomic,
)
from .geometry import Volume, index_to_world

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (for the study ref)
_COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator",
)  # fmt: skip


def _import_skimage_measure() -> ModuleType:
    try:
        from skimage import measure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"writing RTSTRUCT needs scikit-image: {DICOM_INSTALL_HINT}") from err
    return measure


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D bool mask, as ``(N, 2)`` ``(x, y)`` pixel-index vertices.

    Marching squares at 0.5 on the zero-padded mask: every contour separates inside from
    outside pixel centres (holes are contours of their own), so an even-odd fill by pixel
    centres gives ``mask`` back. Collinear vertices are dropped; the closing vertex is implied.
    """
    measure = _import_skimage_measure()
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return []
    y0, x0 = ys.min() - 1, xs.min() - 1
    crop = np.pad(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 1).astype(np.float32)
    out = []
    for c in measure.find_contours(crop, 0.5):
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        c = _drop_collinear(c)
        if len(c) >= 3:
            out.append(np.c_[c[:, 1] + x0, c[:, 0] + y0])
    return out


def _drop_collinear(c: np.ndarray) -> np.ndarray:
    """The vertices of a closed polygon where its direction changes."""
    before = c - np.roll(c, 1, axis=0)
    after = np.roll(c, -1, axis=0) - c
    turn = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return c[turn]


def write_rtstruct(
    labels: np.ndarray,
    source: Volume,
    path: str | os.PathLike,
    segments: Sequence[SegmentInfo] | None = None,
    algorithm: AlgorithmInfo | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label map as an RT Structure Set referencing the series ``source`` came from.

    One ROI per object (name and display colour kept, generation algorithm SEMIAUTOMATIC with
    the model named), one CLOSED_PLANAR contour per outline per slice, in LPS mm.

    Args and raises: as :func:`~napari_sam_med.volume.dicom_seg.write_seg`.
    """
    path, labels, segs, datasets = prepare_output(labels, source, path, segments, overwrite,
                                                  "RTSTRUCT")  # fmt: skip
    ds = build_rtstruct(labels, source, datasets, segs, algorithm or AlgorithmInfo())
    return write_dataset_atomic(ds, path, overwrite)


def build_rtstruct(
    labels: np.ndarray,
    source: Volume,
    datasets: list[Dataset],
    segments: list[SegmentInfo],
    algo: AlgorithmInfo,
) -> Dataset:
    """The pydicom RTSTRUCT dataset (see :func:`write_rtstruct`); ``datasets[k]`` is slice k."""
    pydicom = import_pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset

    ref = datasets[0]
    digest = content_digest(labels, segments, algo)
    ds = Dataset()
    for key in _COPIED:
        setattr(ds, key, getattr(ref, key, ""))
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = content_uid("rtstruct", str(ref.SeriesInstanceUID), digest)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = content_uid("rt-series", str(ref.SeriesInstanceUID), digest)
    ds.SeriesNumber = _series_number(ref) + 1
    ds.SeriesDescription = _safe_lo(f"SAM-Med RTSTRUCT ({algo.model_name})")
    ds.OperatorsName = ""
    ds.Manufacturer = SOFTWARE
    ds.ManufacturerModelName = _safe_lo(algo.model_name)
    ds.SoftwareVersions = algo.version or "unknown"
    now = _dt.datetime.now()
    ds.InstanceCreationDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "SAMMED"
    ds.StructureSetName = _safe_lo(f"{SOFTWARE} {algo.model_name}")
    ds.ReferencedFrameOfReferenceSequence = [_frame_reference(ref, datasets)]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, s in enumerate(segments, start=1):
        _add_roi(ds, number, s, labels, source, datasets, algo)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(RTSTRUCT_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    return ds


def _image_ref(d: Dataset) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = d.SOPClassUID
    item.ReferencedSOPInstanceUID = d.SOPInstanceUID
    return item


def _frame_reference(ref: Dataset, datasets: list[Dataset]) -> Dataset:
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = ref.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(d) for d in datasets]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _add_roi(
    ds: Dataset, number: int, s: SegmentInfo, labels: np.ndarray, source: Volume,
    datasets: list[Dataset], algo: AlgorithmInfo,
) -> None:  # fmt: skip
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = datasets[0].FrameOfReferenceUID
    roi.ROIName = _safe_lo(s.name) or f"object {s.label}"
    roi.ROIDescription = _safe_lo(f"label {s.label}")
    roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
    roi.ROIGenerationDescription = _safe_lo(f"{SOFTWARE} {algo.model_name} {algo.model_checksum}")
    ds.StructureSetROISequence.append(roi)
    contour_roi = Dataset()
    contour_roi.ReferencedROINumber = number
    contour_roi.ROIDisplayColor = [int(c) for c in s.color]
    contour_roi.ContourSequence = []
    for k in np.flatnonzero((labels == s.label).any(axis=(1, 2))).tolist():
        for poly in mask_contours(labels[k] == s.label):
            ijk = np.c_[poly, np.full(len(poly), k, dtype=np.float64)]
            xyz = np.atleast_2d(index_to_world(source, ijk))
            c = Dataset()
            c.ContourImageSequence = [_image_ref(datasets[k])]
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(xyz)
            c.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
            contour_roi.ContourSequence.append(c)
    ds.ROIContourSequence.append(contour_roi)
    obs = Dataset()
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = "GTV"
    obs.ROIInterpreter = ""
    ds.RTROIObservationsSequence.append(obs)
