"""DICOM SEG out and in (highdicom to write, pydicom to read), on the source series' grid.

* :func:`write_seg`: a label map segmented on a DICOM series becomes one BINARY Segmentation
  object: one segment per label value (name, recommended display colour, algorithm
  identification SEMIAUTOMATIC with our name and version and the model's registry name and
  checksum), referencing every source slice and keeping its frame of reference; a segment's
  frames are only the slices holding any of its voxels. Segment numbers run 1..K in label
  order; each segment's Tracking ID records its label value (``"label 7"``) so that
  :func:`read_seg` gives back the same values. SOP Instance and Series Instance UIDs are
  derived from the content (:func:`~napari_sam_med.volume.dicom_source.content_uid`), so
  storing the same result twice on a PACS makes no duplicate.

Reading back: :mod:`napari_sam_med.volume.dicom_seg_read`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .dicom import DICOM_INSTALL_HINT
from .dicom_source import (
    content_uid,
    refuse_existing,
    source_datasets,
    write_dataset_atomic,
)
from .geometry import Volume, VolumeError

if TYPE_CHECKING:
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.seg import Segmentation, SegmentDescription
    from pydicom.dataset import Dataset

    from ..modeling import PromptModel

logger = logging.getLogger(__name__)

SOFTWARE = "napari-sam-med"
# Distinct display colours (sRGB) for labels 1, 2, ... (repeating).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)  # fmt: skip


@dataclass(frozen=True)
class SegmentInfo:
    """One object to store: its label value, name and display colour (sRGB 0..255)."""

    label: int
    name: str
    color: tuple[int, int, int] = (230, 25, 75)


@dataclass(frozen=True)
class AlgorithmInfo:
    """Which model made the segments (recorded in the SEG's algorithm identification)."""

    model_name: str = "unknown"
    model_checksum: str = "unknown"
    version: str = ""


def default_segments(labels: np.ndarray, names: dict[int, str] | None = None) -> list[SegmentInfo]:
    """A :class:`SegmentInfo` per non-zero label value present or named in ``names``, named
    from ``names`` (else ``"object N"``), coloured from :data:`PALETTE`."""
    names = names or {}
    counts = label_counts(labels)
    values = sorted({int(v) for v in np.flatnonzero(counts) if v != 0} | set(names))
    return [
        SegmentInfo(v, names.get(v, f"object {v}"), PALETTE[(v - 1) % len(PALETTE)])
        for v in values
    ]


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Voxels per label value (``np.bincount``), slice by slice to keep memory small."""
    labels = np.asarray(labels)
    total = np.zeros(max(minlength, int(labels.max(initial=0)) + 1), np.int64)
    for plane in labels.reshape(-1, *labels.shape[-2:]):
        c = np.bincount(plane.ravel(), minlength=len(total))
        total += c[: len(total)]
    return total


def algorithm_for(model: PromptModel) -> AlgorithmInfo:
    """The :class:`AlgorithmInfo` of a model from ``build_sam`` (registry name, weights id)."""
    from .. import __version__
    from .cache import model_weights_id

    name = getattr(getattr(model, "config", None), "name", "unknown")
    return AlgorithmInfo(str(name), model_weights_id(model), __version__)


def import_highdicom() -> ModuleType:
    try:
        import highdicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"writing DICOM SEG needs highdicom: {DICOM_INSTALL_HINT}") from err
    return highdicom


def check_segments(labels: np.ndarray, segments: Sequence[SegmentInfo], where: str) -> None:
    """Refuse empty objects and label values without a segment, before anything is written.

    Raises:
        VolumeError: a segment with no voxels, duplicate values, or voxels of an unnamed value.
    """
    if not segments:
        raise VolumeError(f"{where}: the label map holds no objects (all voxels are 0)")
    values = [s.label for s in segments]
    if len(set(values)) != len(values) or min(values) < 1:
        raise VolumeError(f"{where}: segment label values {values} must be distinct and >= 1")
    counts = label_counts(labels, max(values) + 1)
    empty = [f"{s.name!r} (label {s.label})" for s in segments if counts[s.label] == 0]
    if empty:
        raise VolumeError(
            f"{where}: object {', '.join(empty)} has no voxels; a DICOM SEG cannot hold an "
            "empty segment: segment it first or leave it out"
        )
    extra = sorted(set(np.flatnonzero(counts).tolist()) - {0, *values})
    if extra:
        raise VolumeError(f"{where}: label values {extra} have voxels but no segment")


def write_seg(
    labels: np.ndarray,
    source: Volume,
    path: str | os.PathLike,
    segments: Sequence[SegmentInfo] | None = None,
    algorithm: AlgorithmInfo | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label map as a BINARY DICOM SEG referencing the series ``source`` came from.

    Args:
        labels: ``(z, y, x)`` integer labels, shape ``source.array.shape``.
        source: the image, read from a DICOM series (``read_volume(folder)``).
        path: the ``.dcm`` file to write (atomic; refused if it exists unless ``overwrite``).
        segments: one per object (default: every non-zero value, "object N").
        algorithm: the model's identity (default: unknown).
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        VolumeError: the image is not from DICOM (the message says what to write instead),
            the grid differs from the series, an object is empty, or the write fails.
        ImportError: highdicom/pydicom missing (with the install hint).
    """
    path, labels, segs, datasets = prepare_output(labels, source, path, segments, overwrite,
                                                  "DICOM SEG")  # fmt: skip
    seg = build_seg(labels, datasets, segs, algorithm or AlgorithmInfo())
    return write_dataset_atomic(seg, path, overwrite)


def prepare_output(
    labels: np.ndarray,
    source: Volume,
    path: str | os.PathLike,
    segments: Sequence[SegmentInfo] | None,
    overwrite: bool,
    what: str,
) -> tuple[Path, np.ndarray, list[SegmentInfo], list[Dataset]]:
    """What a DICOM writer (SEG, RTSTRUCT) checks and reads before building its dataset.

    The labels are checked against the image, the segments (default: every non-zero value)
    against the labels, the output against the overwrite rule, and the source series is
    read; ``what`` names the object in the messages.

    Returns:
        ``(path, labels, segments, datasets)`` with ``datasets[k]`` the source's slice ``k``.
    """
    path = Path(path)
    labels = _checked_labels(labels, source, path)
    segs = list(segments) if segments is not None else default_segments(labels)
    check_segments(labels, segs, str(path))
    refuse_existing(path, overwrite)
    return path, labels, segs, source_datasets(source, what)


def _checked_labels(labels: ArrayLike, source: Volume, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != source.array.shape:
        raise VolumeError(
            f"{path}: label shape {labels.shape} (z, y, x) does not match the image "
            f"{source._name()} shape {source.array.shape}"
        )
    if labels.dtype.kind not in "iub" or (labels.size and int(labels.min()) < 0):
        raise VolumeError(f"{path}: labels must be non-negative integers, got {labels.dtype}")
    if labels.size and int(labels.max()) > 65535:
        raise VolumeError(f"{path}: label values up to {int(labels.max())}; at most 65535")
    return labels


def build_seg(
    labels: np.ndarray, datasets: list[Dataset], segments: list[SegmentInfo], algo: AlgorithmInfo
) -> Segmentation:
    """The highdicom ``Segmentation`` (see :func:`write_seg`); ``datasets[k]`` is slice ``k``."""
    hd = import_highdicom()
    from pydicom.sr.codedict import codes

    ordered = sorted(segments, key=lambda s: s.label)
    lut = np.zeros(max(s.label for s in ordered) + 1, np.uint8 if len(ordered) < 256 else np.uint16)
    for number, s in enumerate(ordered, start=1):
        lut[s.label] = number
    pixel = lut[labels]  # segment numbers 1..K, the smallest dtype that holds them
    identification = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE,
        family=codes.cid7162.ArtificialIntelligence,
        version=algo.version or "unknown",
        parameters={"model": algo.model_name, "model_checksum": algo.model_checksum},
    )
    descriptions = [
        _description(hd, codes, number, s, identification)
        for number, s in enumerate(ordered, start=1)
    ]
    digest = content_digest(labels, ordered, algo)
    src_uid = str(datasets[0].SeriesInstanceUID)
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=content_uid("seg-series", src_uid, digest),
        series_number=_series_number(datasets[0]),
        sop_instance_uid=content_uid("seg", src_uid, digest),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=algo.model_name[:64],
        software_versions=algo.version or "unknown",
        device_serial_number="none",
        series_description=f"SAM-Med SEG ({algo.model_name})"[:64],
        content_label="SAMMED_SEG",
        content_description=f"{SOFTWARE} segmentation with {algo.model_name}"[:64],
        omit_empty_frames=True,
    )


def content_digest(labels: np.ndarray, segments: list[SegmentInfo], algo: AlgorithmInfo) -> bytes:
    """SHA-256 of the label voxels, the segments and the model: the seed of our UIDs."""
    digest = hashlib.sha256(np.ascontiguousarray(labels).data)  # no copy
    digest.update(repr([(s.label, s.name, tuple(s.color)) for s in segments]).encode())
    digest.update(repr(algo).encode())
    return digest.digest()


def _description(
    hd: ModuleType,
    codes: Any,  # pydicom's code dictionary (attribute lookup of concept names)
    number: int,
    s: SegmentInfo,
    ident: AlgorithmIdentificationSequence,
) -> SegmentDescription:
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_safe_lo(s.name) or f"object {s.label}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=ident,
        tracking_uid=content_uid("tracking", str(s.label), s.name),
        tracking_id=f"label {s.label}",
        display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in s.color)),
    )
    return desc


def _safe_lo(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash or control characters."""
    return re.sub(r"[\\\x00-\x1f]", " ", str(text)).strip()[:64]


def _series_number(ds: Dataset) -> int:
    try:
        return (int(ds.SeriesNumber) % 1000) + 9000
    except (AttributeError, TypeError, ValueError):
        return 9000
