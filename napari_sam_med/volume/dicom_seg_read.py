"""DICOM SEG in: back to a ``(z, y, x)`` label map on the source series' grid (pydicom).

:func:`read_seg` reads BINARY and FRACTIONAL segmentations; label values come from the
segments' Tracking IDs that :func:`~napari_sam_med.volume.dicom_seg.write_seg` writes
(``"label 7"``), else the segment numbers. :func:`find_source_series` finds the series a SEG
references beside it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dicom_seg import import_highdicom
from .dicom_source import import_pydicom
from .geometry import Volume, VolumeError, world_to_index

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


@dataclass
class SegLabels:
    """A SEG read back: ``labels`` ``(z, y, x)`` on the reference grid, ``names`` per label,
    ``colors`` per label (sRGB), and the referenced series UID."""

    labels: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    series_uid: str = ""



def is_seg_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a DICOM file with Modality SEG (header only)."""
    pydicom = import_pydicom()
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not a SEG"
        return False
    return str(getattr(ds, "Modality", "")) == "SEG"


def read_seg(path: str | os.PathLike, reference: Volume) -> SegLabels:
    """Read a DICOM SEG back to a label map on ``reference``'s grid.

    Args:
        path: the SEG ``.dcm`` file (BINARY or FRACTIONAL; fractional frames are thresholded
            at one half).
        reference: the image the SEG was drawn on (its source series), which defines the grid.

    Returns:
        :class:`SegLabels`; label values come from the segments' Tracking IDs written by
        :func:`write_seg` (``"label N"``), else the segment numbers. Where segments overlap,
        the lower segment number wins.

    Raises:
        VolumeError: unreadable or not a SEG, a different frame of reference, or frames that
            do not lie on the reference grid.
    """
    pydicom = import_pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise VolumeError(f"{path}: cannot read the DICOM SEG file ({err})") from err
    if str(getattr(ds, "Modality", "")) != "SEG":
        raise VolumeError(f"{path}: not a DICOM SEG (Modality={getattr(ds, 'Modality', None)!r})")
    _check_frame(ds, reference, path)
    values, out = _segment_table(ds)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    if str(getattr(ds, "SegmentationType", "BINARY")) == "FRACTIONAL":
        frames = frames >= (int(getattr(ds, "MaximumFractionalValue", 255)) + 1) // 2
    labels: np.ndarray = np.zeros(reference.array.shape, np.uint16)
    if (int(ds.Rows), int(ds.Columns)) != labels.shape[1:]:
        raise VolumeError(
            f"{path}: frames are {int(ds.Rows)}x{int(ds.Columns)} but the reference image "
            f"{reference._name()} slices are {labels.shape[1]}x{labels.shape[2]}"
        )
    ks = _frame_slices(ds, reference, path)
    for i in sorted(range(len(ks)), key=lambda i: -_frame_segment(ds, i)):
        labels[ks[i]][frames[i] > 0] = values[_frame_segment(ds, i)]
    out.labels = labels
    return out


def _segment_table(ds: Dataset) -> tuple[dict[int, int], SegLabels]:
    hd = import_highdicom()
    values: dict[int, int] = {}
    result = SegLabels(np.zeros((1, 1, 1), np.uint16))
    ref = getattr(ds, "ReferencedSeriesSequence", None)
    result.series_uid = str(ref[0].SeriesInstanceUID) if ref else ""
    for item in ds.SegmentSequence:
        number = int(item.SegmentNumber)
        match = re.fullmatch(r"label (\d+)", str(getattr(item, "TrackingID", "")))
        value = int(match.group(1)) if match else number
        values[number] = value
        result.names[value] = str(getattr(item, "SegmentLabel", f"segment {number}"))
        if "RecommendedDisplayCIELabValue" in item:
            lab = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue)
            red, green, blue = lab.to_rgb()
            result.colors[value] = (int(red), int(green), int(blue))
    return values, result


def _frame_segment(ds: Dataset, i: int) -> int:
    group = ds.PerFrameFunctionalGroupsSequence[i]
    if "SegmentIdentificationSequence" not in group:  # one segment: in the shared groups
        group = ds.SharedFunctionalGroupsSequence[0]
    return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _frame_slices(ds: Dataset, reference: Volume, path: Path) -> list[int]:
    pos = np.array([
        [float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient]
        for g in ds.PerFrameFunctionalGroupsSequence
    ])  # fmt: skip
    ijk = np.atleast_2d(world_to_index(reference, pos))
    k = np.rint(ijk[:, 2]).astype(int)
    off = np.abs(ijk - np.c_[np.zeros((len(k), 2)), k]).max() if len(k) else 0.0
    nz = reference.array.shape[0]
    if off > 0.05 or (len(k) and (k.min() < 0 or k.max() >= nz)):
        raise VolumeError(
            f"{path}: SEG frames do not lie on the slices of the reference image "
            f"{reference._name()} (off by up to {off:.3f} voxels); wrong reference series?"
        )
    return k.tolist()


def _check_frame(ds: Dataset, reference: Volume, path: Path) -> None:
    ref_uid = reference.metadata.get("frame_of_reference_uid")
    uid = str(getattr(ds, "FrameOfReferenceUID", ""))
    if ref_uid and uid and ref_uid != uid:
        raise VolumeError(
            f"{path}: SEG is in frame of reference {uid}, but the reference image "
            f"{reference._name()} is in {ref_uid}"
        )


def find_source_series(seg_path: str | os.PathLike) -> Volume:
    """The image series a SEG references, looked for beside it: in the SEG's folder, its
    parent, and their sub-folders (two levels).

    Raises:
        VolumeError: the referenced series is in none of those folders.
    """
    from .dicom import list_dicom_series
    from .io import read_volume

    pydicom = import_pydicom()
    path = Path(seg_path)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (OSError, AttributeError, IndexError, pydicom.errors.InvalidDicomError) as err:
        raise VolumeError(f"{path}: not a readable DICOM SEG ({type(err).__name__})") from None
    roots = [path.parent, path.parent.parent]
    candidates = [*roots, *(d for r in roots for d in sorted(r.glob("*/")) if d.is_dir()),
                  *(d for r in roots for d in sorted(r.glob("*/*/")) if d.is_dir())]  # fmt: skip
    for folder in dict.fromkeys(candidates):
        if any(s.uid == uid for s in list_dicom_series(folder)):
            return read_volume(folder, series_uid=uid)
    raise VolumeError(
        f"{path}: the SEG references series {uid}, which is not in {path.parent} or beside "
        "it; keep the SEG next to its series folder (or read it with read_seg(path, volume))"
    )
