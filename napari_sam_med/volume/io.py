"""Read and write CT/MR volumes and label maps without losing their geometry.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) through SimpleITK, and DICOM series (a folder, or one ``.dcm`` file of the series).
RTSTRUCT contours are rasterised by :func:`read_rtstruct` and DICOM SEG objects read back by
:func:`~napari_sam_med.volume.dicom_seg_read.read_seg` (both need pydicom; writers in
``dicom_seg`` / ``rtstruct_out``).

Conventions (see :mod:`napari_sam_med.volume.geometry`): arrays are ``(z, y, x)``, voxel
indices and spacing are ``(x, y, z)`` as ITK orders them, world coordinates are LPS mm.
Every fault is reported as :class:`VolumeError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import OutputExistsError
from ..outputs import atomic_output, check_output
from .dicom import list_dicom_series, read_dicom_series, read_rtstruct
from .geometry import (
    Volume,
    VolumeError,
    check_label_matches,
    index_in_grid,
    index_to_world,
    volume_from_sitk,
    volume_to_sitk,
    world_to_index,
    world_to_nearest_index,
)
from .header_guard import check_claimed_size
from .nonfinite import check_finite, nifti_nonfinite_mask

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "Volume",
    "VolumeError",
    "check_label_matches",
    "file_suffix",
    "index_in_grid",
    "index_to_world",
    "list_dicom_series",
    "read_rtstruct",
    "read_volume",
    "volume_from_sitk",
    "volume_to_sitk",
    "world_to_index",
    "world_to_nearest_index",
    "write_labels",
    "write_volume",
]

logger = logging.getLogger(__name__)

_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".dcm": "dicom",
}
READ_SUFFIXES: tuple[str, ...] = tuple(_FORMATS)
# Single-file formats only, so that the write can be atomic (.nhdr/.mhd have a data sidecar).
WRITE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")


def file_suffix(path: str | os.PathLike) -> str:
    """The lower-case volume suffix of ``path`` (``".nii.gz"`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def strip_volume_suffix(name: str) -> str:
    """``name`` (a file name or a relative path) without its volume suffix:
    ``"a/ct1.nii.gz"`` -> ``"a/ct1"``; see :func:`case_name` for a file-system-safe case name."""
    suffix = file_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def file_stem(path: str | os.PathLike) -> str:
    """A file name without its volume suffix (``a/ct1.nii.gz`` -> ``ct1``)."""
    return strip_volume_suffix(Path(path).name)


def read_volume(
    path: str | os.PathLike,
    series_uid: str | None = None,
    component: int | None = None,
    allow_nonfinite: bool = False,
    nonfinite_fill: float | None = None,
) -> Volume:
    """Read a 3D volume with its geometry.

    Args:
        path: A NIfTI/NRRD/MetaImage file, a folder holding a DICOM series, or one ``.dcm``
            file (its whole series is read).
        series_uid: For a DICOM folder holding several series: the SeriesInstanceUID to read.
        component: For 4D files (several volumes, e.g. time points or modalities) or
            multi-component pixels: which volume to read, from 0.
        allow_nonfinite: Accept NaN/Inf voxels as they are instead of raising (for NIfTI,
            SimpleITK has already turned them into 0).
        nonfinite_fill: Replace NaN/Inf voxels with this value instead of raising.

    Returns:
        The :class:`Volume` (array ``(z, y, x)`` in the file's own dtype, CT in HU for DICOM).

    Raises:
        VolumeError: missing, unreadable or truncated file, or a header claiming more data
            than the file holds (checked before allocating, see
            :mod:`~napari_sam_med.volume.header_guard`); unsupported suffix; empty DICOM
            folder; several DICOM series and no ``series_uid``; 4D data and no
            ``component``; NaN/Inf voxels (with their count) and no ``nonfinite_fill``.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    mask = None
    if path.is_dir():
        vol = read_dicom_series(path, series_uid)
    else:
        suffix = file_suffix(path)
        kind = _FORMATS.get(suffix)
        if kind is None:
            raise VolumeError(
                f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
                f"expected one of {', '.join(READ_SUFFIXES)} or a DICOM folder"
            )
        if kind == "dicom":
            vol = read_dicom_series(path.parent, series_uid or _series_uid_of(path))
        else:
            check_claimed_size(path, kind)
            if kind == "nifti" and not allow_nonfinite:
                mask = nifti_nonfinite_mask(path, component)
            vol = _read_file(path, kind, component)
    if not allow_nonfinite or nonfinite_fill is not None:
        check_finite(vol, mask, nonfinite_fill)
    return vol


def _series_uid_of(path: Path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return reader.GetMetaData("0020|000e").strip()
    except RuntimeError as err:
        raise VolumeError(f"{path}: not a readable DICOM image ({_first_line(err)})") from err


def _read_file(path: Path, kind: str, component: int | None) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as err:
        raise VolumeError(
            f"{path}: cannot read the {kind} file; it may be truncated or corrupt "
            f"({_first_line(err)})"
        ) from err
    image, meta = _select_component(image, path, component)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise VolumeError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    vol = volume_from_sitk(image, path)
    vol.metadata.update(format=kind, pixel_type=image.GetPixelIDTypeAsString(), **meta)
    return vol


def _select_component(
    image: sitk.Image, path: Path, component: int | None
) -> tuple[sitk.Image, dict]:
    """Reduce a 4D image or a multi-component pixel to the requested 3D volume."""
    n_vec = image.GetNumberOfComponentsPerPixel()
    n_4d = image.GetSize()[3] if image.GetDimension() == 4 else 1
    count = max(n_vec, n_4d)
    if count == 1:
        if image.GetDimension() == 4:
            image = image[:, :, :, 0]
        if component not in (None, 0):
            raise VolumeError(f"{path}: holds one volume; component={component} does not exist")
        return image, {}
    if component is None:
        layout = (
            f"a 4D image of size (x, y, z, t) {image.GetSize()}"
            if n_4d > 1
            else f"{n_vec} components per voxel"
        )
        raise VolumeError(
            f"{path}: holds {count} volumes ({layout}); choose one with --component K "
            f"(read_volume(path, component=K)), K in 0..{count - 1}"
        )
    if not 0 <= component < count:
        raise VolumeError(f"{path}: component={component} out of range 0..{count - 1}")
    if n_vec > 1:
        image = sitk.VectorIndexSelectionCast(image, component)
    else:
        image = image[:, :, :, component]
    return image, {"component": component, "n_components": count}


def write_volume(
    vol: Volume, path: str | os.PathLike, compress: bool = True, overwrite: bool = False
) -> Path:
    """Write ``vol`` atomically to NIfTI/NRRD/MetaImage, chosen by the suffix of ``path``.

    The data go to a temporary file in the same folder (same suffix, so SimpleITK picks the
    right writer), which then becomes ``path`` in one step; on failure nothing is left over.
    An existing ``path`` is refused unless ``overwrite`` (the rule of
    :func:`napari_sam_med.outputs.atomic_output`).

    Args:
        vol: The volume; its spacing, origin and direction are written unchanged.
        path: Target file ending in one of :data:`WRITE_SUFFIXES`.
        compress: gzip the voxel data where the format allows (NRRD, MetaImage).
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        VolumeError: unsupported suffix, missing or read-only folder, or a failed write.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise VolumeError(
            f"{path}: cannot write {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(WRITE_SUFFIXES)}"
        )
    if not path.parent.is_dir():
        raise VolumeError(f"{path}: folder {path.parent} does not exist")
    image = volume_to_sitk(vol)
    try:
        with atomic_output(path, overwrite) as tmp:
            try:
                sitk.WriteImage(image, str(tmp), compress)
            except RuntimeError as err:
                raise VolumeError(f"{path}: writing failed ({_first_line(err)})") from None
    except OutputExistsError:
        raise
    except OSError as err:
        raise VolumeError(f"{path}: writing failed ({err})") from None
    logger.info("wrote %s %s (z, y, x) %s", path, vol.array.shape, vol.array.dtype)
    return path


def write_labels(
    labels: np.ndarray,
    reference: Volume,
    path: str | os.PathLike,
    compress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a label map on exactly the reference image's grid (atomic, format by suffix).

    Args:
        labels: Integer or boolean labels, shape ``(z, y, x)`` = ``reference.array.shape``.
            Stored as uint8 when the values fit, else uint16 / int32.
        reference: The image the labels annotate; its spacing, origin and direction are used.
        path: Target ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` file.
        compress: gzip the voxel data where the format allows.
        overwrite: replace an existing file (else :class:`OutputExistsError`).

    Returns:
        The written path.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        VolumeError: wrong shape, non-integer or negative-overflowing values, or a failed write.
    """
    if not isinstance(reference, Volume):
        raise VolumeError(
            f"{path}: write_labels(labels, reference, path) needs the reference Volume second; "
            f"got {type(reference).__name__} {str(reference)[:80]!r}"
        )
    labels = np.asarray(labels)
    if labels.shape != reference.array.shape:
        raise VolumeError(
            f"{path}: label shape {labels.shape} (z, y, x) does not match the reference "
            f"{reference._name()} shape {reference.array.shape}"
        )
    check_output(path, overwrite)  # before converting the labels
    data = reference.with_array(_label_dtype(labels, path))
    return write_volume(data, path, compress, overwrite)


def _label_dtype(labels: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels) & (labels == np.round(labels))):
            raise VolumeError(f"{path}: labels must be integers, got non-integer {labels.dtype}")
    elif labels.dtype.kind not in "iu":
        raise VolumeError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return labels.astype(dtype, copy=False)
    raise VolumeError(f"{path}: label values {lo}..{hi} do not fit in int32")


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # ITK messages put the useful sentence last ("... : Could not create IO object ...").
    return lines[-1] if lines else type(err).__name__


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")


def case_name(path: str | os.PathLike) -> str:
    """A file-system-safe case name from an image path (``CT_001.nii.gz`` -> ``CT_001``).

    The image suffix and an nnU-Net channel suffix ``_0000`` are dropped; a DICOM folder keeps
    its name.
    """
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return name.removesuffix("_0000") or "case"
