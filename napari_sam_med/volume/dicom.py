"""DICOM series (through SimpleITK/GDCM) and RTSTRUCT contours (through pydicom, optional).

Conventions as in :mod:`napari_sam_med.volume.geometry`: arrays ``(z, y, x)``, voxel indices
``(x, y, z)``, world LPS mm. RTSTRUCT contour points are LPS mm by the DICOM standard.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from .geometry import Volume, VolumeError, volume_from_sitk, world_to_index

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

DICOM_INSTALL_HINT = "pip install 'napari-sam-med[dicom]'"
DERIVED_MODALITIES = ("SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "KO", "PR")

# DICOM tags read from the first file of a series into Volume.metadata (no patient identity).
_TAGS = {
    "0008|0060": "modality",
    "0008|103e": "series_description",
    "0020|000e": "series_instance_uid",
    "0020|000d": "study_instance_uid",
    "0020|0052": "frame_of_reference_uid",
}


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One image series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality such as "CT" or "MR" ("" when absent).
        files: The slice files, sorted along the slice normal by GDCM.
    """

    uid: str
    description: str
    modality: str
    files: tuple[str, ...]

    def summary(self) -> str:
        """One line: UID, description, modality and slice count."""
        desc = self.description or "(no description)"
        return f"{self.uid} [{self.modality or '?'}] {desc!r}: {len(self.files)} slices"


def _header(path: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return {
        key: reader.GetMetaData(tag).strip()
        for tag, key in _TAGS.items()
        if reader.HasMetaDataKey(tag)
    }


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """The image series in ``folder`` (not recursive); non-image objects are left out.

    Raises:
        VolumeError: when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{folder}: not a folder")
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        try:
            meta = _header(files[0])
        except RuntimeError:
            logger.info("%s: series %s is not an image series, skipped", folder, uid)
            continue
        description, modality = meta.get("series_description", ""), meta.get("modality", "")
        if modality in DERIVED_MODALITIES:  # a SEG/RTSTRUCT beside its series is no image
            continue
        found.append(DicomSeriesInfo(uid, description, modality, files))
    return found


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read one DICOM image series from a folder (rescale slope/intercept applied: CT in HU).

    Args:
        folder: Folder holding the slice files.
        series_uid: The SeriesInstanceUID to read; needed only if the folder holds several.

    Returns:
        The :class:`Volume`; ``metadata`` holds format, modality, series description and the
        series, study and frame-of-reference UIDs.

    Raises:
        VolumeError: no series in the folder; several and no ``series_uid`` (the message lists
            each UID with its description and slice count); unknown UID; unreadable slices.
    """
    folder = Path(folder)
    series = list_dicom_series(folder)
    if not series:
        raise VolumeError(f"{folder}: no DICOM image series found in this folder")
    listing = "; ".join(s.summary() for s in series)
    if series_uid is None:
        if len(series) > 1:
            raise VolumeError(
                f"{folder}: holds {len(series)} DICOM series, choose one with --series-uid "
                f"UID (series_uid=...): {listing}"
            )
        chosen = series[0]
    else:
        matches = [s for s in series if s.uid == series_uid.strip()]
        if not matches:
            raise VolumeError(f"{folder}: no series with UID {series_uid!r}; found: {listing}")
        chosen = matches[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise VolumeError(f"{folder}: cannot read series {chosen.uid}: {err}") from err
    vol = volume_from_sitk(image, folder)
    vol.metadata.update(format="dicom", **_header(chosen.files[0]))
    logger.info("read DICOM %s: %s", folder, chosen.summary())
    return vol


def _import_pydicom() -> ModuleType:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading RTSTRUCT files needs pydicom: {DICOM_INSTALL_HINT}") from err
    return pydicom


def read_rtstruct(
    rtstruct_path: str | os.PathLike, reference: Volume, roi_name: str | None = None
) -> np.ndarray:
    """Rasterise one RTSTRUCT ROI onto the reference image grid.

    Each closed planar contour (LPS mm) is mapped to continuous voxel indices of
    ``reference`` and filled on its slice; a voxel is inside when its centre is. Several
    contours on one slice combine by the even-odd rule, so holes (inner contours) are cut out.

    Args:
        rtstruct_path: The RTSTRUCT ``.dcm`` file.
        reference: The image the structure set was drawn on (e.g. from :func:`read_volume`).
        roi_name: Name of the ROI (exact, else case-insensitive); optional when there is one.

    Returns:
        uint8 label volume, shape ``(z, y, x)`` = ``reference.array.shape``, 1 inside.

    Raises:
        ImportError: pydicom is not installed (with the install hint).
        VolumeError: unreadable or non-RTSTRUCT file, unknown or ambiguous ROI, an ROI
            without contours, a different frame of reference, or contours off the grid.
    """
    pydicom = _import_pydicom()
    path = Path(rtstruct_path)
    try:
        ds = pydicom.dcmread(str(path))
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise VolumeError(f"{path}: cannot read the RTSTRUCT file ({err})") from err
    if getattr(ds, "Modality", "") != "RTSTRUCT":
        raise VolumeError(f"{path}: not an RTSTRUCT (Modality={getattr(ds, 'Modality', None)!r})")
    _check_frame_of_reference(ds, reference, path)
    number, name = _choose_roi(ds, roi_name, path)
    polygons = _contours_of(ds, number, name, path)
    labels = _rasterise_contours(polygons, reference, f"{path} ROI {name!r}")
    logger.info("%s: ROI %r -> %d voxels", path, name, int(labels.sum()))
    return labels


def _choose_roi(ds: Dataset, roi_name: str | None, path: Path) -> tuple[int, str]:
    rois = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    if not rois:
        raise VolumeError(f"{path}: the RTSTRUCT holds no ROI")
    names = sorted(rois.values())
    if roi_name is None:
        if len(rois) > 1:
            raise VolumeError(f"{path}: holds {len(rois)} ROIs, choose one with roi_name: {names}")
        return next(iter(rois.items()))
    for exact in (True, False):
        for number, name in rois.items():
            if name == roi_name if exact else name.lower() == roi_name.lower():
                return number, name
    raise VolumeError(f"{path}: no ROI named {roi_name!r}; available: {names}")


def _check_frame_of_reference(ds: Dataset, reference: Volume, path: Path) -> None:
    ref_uid = reference.metadata.get("frame_of_reference_uid")
    seq = getattr(ds, "ReferencedFrameOfReferenceSequence", [])
    uids = {str(item.FrameOfReferenceUID) for item in seq if "FrameOfReferenceUID" in item}
    if ref_uid and uids and ref_uid not in uids:
        raise VolumeError(
            f"{path}: drawn in frame of reference {sorted(uids)}, but the reference image "
            f"{reference._name()} is in {ref_uid}"
        )


def _contours_of(ds: Dataset, number: int, name: str, path: Path) -> list[np.ndarray]:
    """The closed contours of ROI ``number`` as LPS ``(N, 3)`` arrays."""
    polygons = []
    for roi in getattr(ds, "ROIContourSequence", []):
        if int(roi.ReferencedROINumber) != number:
            continue
        for contour in getattr(roi, "ContourSequence", []):
            kind = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR"))
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            if kind != "CLOSED_PLANAR" or len(points) < 3:
                logger.warning("%s: ROI %r: skipped a %s contour", path, name, kind)
                continue
            polygons.append(points)
    if not polygons:
        raise VolumeError(f"{path}: ROI {name!r} has no closed planar contours")
    return polygons


def _rasterise_contours(polygons: list[np.ndarray], reference: Volume, what: str) -> np.ndarray:
    nz, ny, nx = reference.array.shape
    per_slice: dict[int, list[np.ndarray]] = {}
    off_plane = outside = 0
    for points in polygons:
        ijk = world_to_index(reference, points)
        k = int(np.rint(np.median(ijk[:, 2])))
        if np.max(np.abs(ijk[:, 2] - k)) > 0.5:
            off_plane += 1
        elif not 0 <= k < nz:
            outside += 1
        else:
            per_slice.setdefault(k, []).append(ijk[:, :2])
    if off_plane:
        logger.warning("%s: %d contours are not on an image slice, skipped", what, off_plane)
    if outside:
        logger.warning("%s: %d contours lie beyond the first/last slice", what, outside)
    if not per_slice:
        raise VolumeError(
            f"{what}: none of the {len(polygons)} contours lies on a slice of the reference "
            f"image {reference._name()} (wrong reference image?)"
        )
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    for k, polys in per_slice.items():
        labels[k] = rasterize_polygons(polys, (ny, nx))
    return labels


def rasterize_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons on a pixel grid with the even-odd rule, testing pixel centres.

    Args:
        polygons: Each an ``(N, 2)`` array of ``(x, y)`` vertices in pixel index units
            (integer values are pixel centres); closing edge implied.
        shape: ``(height, width)`` of the output.

    Returns:
        bool mask of ``shape``: True where a pixel centre is inside an odd number of polygons
        (so an inner contour cuts a hole). Half-open rule: a centre exactly on an edge counts
        as inside on the polygon's low-x / low-y side and outside on its high side.
    """
    ny, nx = shape
    mask = np.zeros((ny, nx), dtype=bool)
    if not polygons:
        return mask
    edges = np.concatenate(
        [np.hstack([p, np.roll(p, -1, axis=0)]) for p in (np.asarray(q, float) for q in polygons)]
    )
    edges = edges[edges[:, 1] != edges[:, 3]]  # horizontal edges never cross a scanline
    if not len(edges):
        return mask
    y_lo = np.minimum(edges[:, 1], edges[:, 3])
    y_hi = np.maximum(edges[:, 1], edges[:, 3])
    columns = np.arange(nx)
    for j in range(max(0, math.ceil(y_lo.min())), min(ny - 1, math.floor(y_hi.max())) + 1):
        active = edges[(y_lo <= j) & (j < y_hi)]
        if not len(active):
            continue
        t = (j - active[:, 1]) / (active[:, 3] - active[:, 1])
        crossings = np.sort(active[:, 0] + t * (active[:, 2] - active[:, 0]))
        mask[j] = np.searchsorted(crossings, columns, side="right") % 2 == 1
    return mask
