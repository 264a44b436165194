"""The DICOM headers behind a volume, checked, for writing DICOM SEG and RTSTRUCT objects.

A SEG or RTSTRUCT must reference the exact slices it was drawn on, so both writers start
here: :func:`source_datasets` re-reads the headers (no pixels) of the series a
:class:`~napari_sam_med.volume.geometry.Volume` came from, refuses series that cannot carry
a derived object (missing or unevenly spaced slices, mixed orientations, several frames of
reference, a grid that differs from the volume's) and returns one dataset per slice in the
volume's z order. :func:`write_dataset_atomic` writes a dataset the house way (temporary
file in the same folder, then one rename; never over an existing file unless asked).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

import numpy as np

from ..errors import OutputExistsError
from ..outputs import atomic_output, check_output
from .dicom import DICOM_INSTALL_HINT, list_dicom_series
from .geometry import Volume, VolumeError, world_to_index

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

# Slice positions may differ from an even grid by this fraction of the spacing.
SPACING_TOLERANCE = 0.01


def import_pydicom() -> ModuleType:
    """pydicom, or an ImportError with the install hint."""
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"DICOM SEG/RTSTRUCT need pydicom: {DICOM_INSTALL_HINT}") from err
    return pydicom


def require_dicom_source(volume: Volume, what: str) -> tuple[Path, str]:
    """The DICOM folder and SeriesInstanceUID of ``volume``, or a VolumeError saying what to
    write instead (``what`` is e.g. ``"DICOM SEG"``)."""
    fmt = volume.metadata.get("format")
    uid = volume.metadata.get("series_instance_uid")
    if fmt != "dicom" or volume.path is None or not uid:
        raise VolumeError(
            f"{volume._name()}: a {what} must reference the DICOM series it was drawn on, but "
            f"this image was read from {fmt or 'memory'!s} (not a DICOM series); write the "
            "labels as .nii.gz, .nrrd or .mha instead (sam-med segment -o OUT.nii.gz), or "
            "segment the original DICOM series"
        )
    return Path(volume.path), str(uid)


def source_datasets(volume: Volume, what: str = "DICOM SEG") -> list[Dataset]:
    """The headers (no pixel data) of ``volume``'s DICOM slices, in the volume's z order.

    Args:
        volume: read by :func:`~napari_sam_med.volume.io.read_volume` from a DICOM series
            (``metadata["format"] == "dicom"``, ``path`` = its folder).
        what: the object about to be written, for messages.

    Returns:
        ``list[pydicom.Dataset]``, item ``k`` describing ``volume.array[k]``.

    Raises:
        VolumeError: not a DICOM volume (the message says what to write instead), the series
            is gone from its folder, or :func:`check_series` refuses it.
    """
    pydicom = import_pydicom()
    folder, uid = require_dicom_source(volume, what)
    matches = [s for s in list_dicom_series(folder) if s.uid == uid]
    if not matches:
        raise VolumeError(f"{folder}: series {uid} is no longer in this folder")
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in matches[0].files]
    return order_like_volume(check_series(datasets, f"{folder} series {uid}"), volume)


def check_series(datasets: list[Dataset], name: str) -> list[Dataset]:
    """Refuse a series that cannot be one regular 3D grid; return it sorted along its normal.

    Raises:
        VolumeError naming the series: several frames of reference, mixed orientations or
            slice sizes, duplicate, missing or unevenly spaced slices.
    """
    if not datasets:
        raise VolumeError(f"{name}: holds no image slices")
    fors = sorted({str(getattr(d, "FrameOfReferenceUID", "")) for d in datasets})
    if len(fors) > 1:
        raise VolumeError(
            f"{name}: spans {len(fors)} frames of reference {fors}; split it into one series "
            "per frame of reference"
        )
    orients = np.array([_floats(d, "ImageOrientationPatient", 6, name) for d in datasets])
    if np.abs(orients - orients[0]).max() > 1e-3:
        raise VolumeError(f"{name}: mixed slice orientations; expected one orientation")
    sizes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(sizes) > 1:
        raise VolumeError(f"{name}: slices of different sizes {sorted(sizes)}")
    normal = np.cross(orients[0][:3], orients[0][3:])
    pos = np.array([_floats(d, "ImagePositionPatient", 3, name) @ normal for d in datasets])
    order = np.argsort(pos)
    gaps = np.diff(pos[order])
    if len(gaps):
        step = float(np.median(gaps))
        if step <= 1e-6 or gaps.min() <= 1e-6:
            raise VolumeError(f"{name}: two slices share one position; expected one per slice")
        bad = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step)
        if len(bad):
            k = int(bad[0])
            raise VolumeError(
                f"{name}: slices are unevenly spaced (gap {gaps[k]:.3f} mm after slice {k}, "
                f"expected {step:.3f} mm): missing or extra slices; fix or split the series"
            )
    return [datasets[i] for i in order]


def order_like_volume(datasets: list[Dataset], volume: Volume) -> list[Dataset]:
    """Put one dataset per volume slice in z order; refuse a grid that differs.

    Raises:
        VolumeError: slice count, size or any slice position differs from the volume grid.
    """
    nz, ny, nx = volume.array.shape
    d0 = datasets[0]
    if len(datasets) != nz or (int(d0.Rows), int(d0.Columns)) != (ny, nx):
        raise VolumeError(
            f"{volume._name()}: the DICOM series has {len(datasets)} slices of "
            f"{int(d0.Rows)}x{int(d0.Columns)}, but the labels' grid is {nz} slices of "
            f"{ny}x{nx} (z, y, x)"
        )
    pos = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    ijk = np.atleast_2d(world_to_index(volume, pos))
    k = np.rint(ijk[:, 2]).astype(int)
    off = np.abs(ijk - np.c_[np.zeros((len(k), 2)), k]).max()
    if off > 0.05 or sorted(k.tolist()) != list(range(nz)):
        raise VolumeError(
            f"{volume._name()}: the DICOM slice positions do not lie on the labels' grid "
            f"(off by up to {off:.3f} voxels); the labels were not made on this series"
        )
    out: list[Dataset | None] = [None] * nz
    for ds, kk in zip(datasets, k.tolist(), strict=True):
        out[kk] = ds
    return cast("list[Dataset]", out)  # k is a permutation of range(nz): every slot is set


def _floats(ds: Dataset, key: str, n: int, name: str) -> np.ndarray:
    value = getattr(ds, key, None)
    if value is None or len(value) != n:
        sop = getattr(ds, "SOPInstanceUID", "?")
        raise VolumeError(f"{name}: slice {sop} has no valid {key} ({n} numbers expected)")
    return np.asarray([float(v) for v in value])


def write_dataset_atomic(ds: Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a pydicom dataset to ``path`` through a temporary file and one rename.

    Raises:
        VolumeError: ``path`` exists and ``overwrite`` is False, its folder is missing, or
            the write fails (nothing is left behind).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise VolumeError(f"{path}: folder {path.parent} does not exist")
    try:
        with atomic_output(path, overwrite) as tmp:  # the package's one overwrite rule
            ds.save_as(str(tmp), enforce_file_format=True)
    except OutputExistsError:
        raise
    except (OSError, ValueError, TypeError) as err:
        raise VolumeError(f"{path}: writing failed ({err})") from err
    logger.info("wrote %s (%s)", path, getattr(ds, "Modality", "DICOM"))
    return path


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """``OutputExistsError`` (a ``VolumeError``) when ``path`` exists and may not be replaced:
    :func:`napari_sam_med.outputs.check_output`, the package's one overwrite rule."""
    check_output(path, overwrite)


def content_uid(*parts: bytes | str) -> str:
    """A UID derived from content (``2.25.<128-bit hash>``): the same inputs give the same UID,
    so storing the same object twice on a PACS does not create a duplicate."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\x00")
    return "2.25." + str(int(h.hexdigest()[:32], 16))
