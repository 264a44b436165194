"""Which file a case's label map becomes: NIfTI/NRRD/MHA by suffix, or DICOM SEG / RTSTRUCT.

A case (manifest ``"format"``, CLI ``--format``) may ask for ``"seg"`` or ``"rtstruct"``; its
output must then end in ``.dcm`` and its image must be a DICOM series. Without a format the
output's suffix decides, as before. :func:`write_case_labels` is the one writer the batch
runner calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .io import WRITE_SUFFIXES, file_suffix, write_labels

if TYPE_CHECKING:
    from ..modeling import PromptModel
    from .geometry import Volume
    from .objects import ObjectSegmentation

DICOM_FORMATS = ("seg", "rtstruct")
FORMATS = ("nifti", "nrrd", "mha", *DICOM_FORMATS)  # the first three just follow the suffix
_DEFAULT_NAME = {"seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}


def output_problem(fmt: object, output: Path) -> tuple[str, object, str] | None:
    """``(field, value, "expected ...")`` of what is wrong with ``fmt``/``output``, or None."""
    if fmt is not None and fmt not in FORMATS:
        return "format", fmt, f"one of {FORMATS} (or no format: the output's suffix decides)"
    if fmt in DICOM_FORMATS:
        if file_suffix(output) != ".dcm":
            return "output", str(output), f"a .dcm file for format {fmt!r}"
        return None
    if file_suffix(output) not in WRITE_SUFFIXES:
        expected = f"a file ending in {WRITE_SUFFIXES} (or .dcm with format 'seg'/'rtstruct')"
        return "output", str(output), expected
    return None


def default_output_name(stem: str, fmt: str | None) -> str:
    """``<stem>_seg.nii.gz``, or ``<stem>_seg.dcm`` / ``<stem>_rtstruct.dcm`` for DICOM."""
    return stem + _DEFAULT_NAME.get(fmt or "", "_seg.nii.gz")


def write_case_labels(
    labels: np.ndarray,
    volume: Volume,
    output: str | os.PathLike,
    fmt: str | None = None,
    objects: Sequence[ObjectSegmentation] | None = None,
    model: PromptModel | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a case's labels as ``fmt`` (DICOM SEG / RTSTRUCT) or by the output's suffix.

    Args:
        labels: ``(z, y, x)`` label map on ``volume``'s grid.
        volume: the segmented image (a DICOM series for ``"seg"``/``"rtstruct"``).
        output: the target file.
        fmt: ``"seg"``, ``"rtstruct"`` or None (suffix decides).
        objects: the objects (``label`` and ``name`` attributes) naming the segments.
        model: the model, recorded in the DICOM object's algorithm identification.
        overwrite: replace an existing output (else ``OutputExistsError``).

    Raises:
        VolumeError: see :func:`~napari_sam_med.volume.dicom_seg.write_seg`.
    """
    if fmt not in DICOM_FORMATS:
        return write_labels(labels, volume, output, overwrite=overwrite)
    from .dicom_seg import algorithm_for, default_segments, write_seg
    from .rtstruct_out import write_rtstruct

    names = {int(o.label): str(o.name) for o in objects or []}
    segments = default_segments(labels, names)  # named objects left empty are refused
    algo = algorithm_for(model) if model is not None else None
    writer = write_seg if fmt == "seg" else write_rtstruct
    return writer(labels, volume, output, segments, algo, overwrite)


def check_case_output(
    volume: Volume, fmt: str | None, output: str | os.PathLike, overwrite: bool = False
) -> None:
    """Refuse, before any segmenting, a DICOM format on a non-DICOM image, a series that
    cannot carry a SEG/RTSTRUCT (uneven or missing slices, mixed orientations, several frames
    of reference; see :func:`~.dicom_source.check_series`), or an existing DICOM output that
    may not be replaced.

    Raises:
        VolumeError: the message names the series or file and says what to do instead.
    """
    if fmt not in DICOM_FORMATS:
        return
    from .dicom_source import refuse_existing, source_datasets

    source_datasets(volume, "DICOM SEG" if fmt == "seg" else "RTSTRUCT")  # headers only
    refuse_existing(output, overwrite)


def seg_to_rtstruct(
    seg_path: str | os.PathLike, image: str | os.PathLike, output: str | os.PathLike,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """Write the RTSTRUCT of a DICOM SEG we wrote (same objects, names and colours).

    Args:
        seg_path: the SEG file.
        image: the DICOM series folder it references.
        output: the RTSTRUCT ``.dcm`` to write.
        overwrite: replace an existing file.
    """
    import pydicom

    from .dicom_seg import AlgorithmInfo, SegmentInfo
    from .dicom_seg_read import read_seg
    from .io import read_volume
    from .rtstruct_out import write_rtstruct

    header = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    source_uid = str(header.ReferencedSeriesSequence[0].SeriesInstanceUID)
    volume = read_volume(image, series_uid=source_uid)
    seg = read_seg(seg_path, volume)
    segments = [SegmentInfo(v, seg.names[v], seg.colors.get(v, (230, 25, 75))) for v in seg.names]
    algo = AlgorithmInfo(str(getattr(header, "ManufacturerModelName", "unknown")),
                         _seg_checksum(header), str(getattr(header, "SoftwareVersions", "")))
    return write_rtstruct(seg.labels, volume, output, segments, algo, overwrite)


def _seg_checksum(header: Any) -> str:
    try:
        ident = header.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        pairs = (kv.split("=", 1) for kv in str(ident.AlgorithmParameters).split(","))
        return dict(p for p in pairs if len(p) == 2).get("model_checksum", "unknown")
    except (AttributeError, IndexError):
        return "unknown"
