"""The :class:`Volume` container and its index <-> world conversions.

One convention, used everywhere in :mod:`napari_sam_med.volume`:

* ``Volume.array`` is a numpy array ordered ``(z, y, x)`` (what napari shows and what
  ``SimpleITK.GetArrayFromImage`` returns).
* A *voxel index* ``ijk`` is ordered ``(x, y, z)`` = ``(i, j, k)`` as ITK orders it, so voxel
  ``ijk`` holds ``array[k, j, i]``. Integer indices are voxel centres.
* *World* coordinates are millimetres in the patient LPS frame (DICOM / ITK):
  ``world = origin + direction @ (spacing * ijk)``, with ``direction`` a 3x3 matrix stored
  row-major as a 9-tuple (exactly ``SimpleITK.Image.GetDirection()``), whose columns are the
  world directions of the i, j and k axes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike

from ..errors import VolumeError

logger = logging.getLogger(__name__)

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Volume:
    """A 3D image with its physical geometry.

    Attributes:
        array: Voxel values, shape ``(z, y, x)``.
        spacing: Voxel size in mm, ordered ``(x, y, z)`` as ITK.
        origin: World position (LPS, mm) of the centre of voxel index ``(0, 0, 0)``.
        direction: 3x3 direction cosine matrix, row-major 9-tuple as ``SimpleITK`` returns it.
        path: The file or DICOM folder it was read from, if any.
        metadata: Free-form information (format, modality, DICOM UIDs, ...).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise VolumeError(
                f"{self._name()}: expected a 3D (z, y, x) array, got shape {self.array.shape}"
            )
        self.spacing = _float3(self.spacing, "spacing", self._name())
        self.origin = _float3(self.origin, "origin", self._name())
        self.direction = _float_tuple(self.direction, 9, "direction", self._name())
        if any(s <= 0 or not np.isfinite(s) for s in self.spacing):
            raise VolumeError(f"{self._name()}: spacing must be positive, got {self.spacing}")
        if abs(np.linalg.det(self.direction_matrix)) < 1e-6:
            raise VolumeError(f"{self._name()}: direction matrix is singular: {self.direction}")
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """The grid size ordered ``(x, y, z)`` as ITK (the reverse of ``array.shape``)."""
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction as a float64 ``(3, 3)`` matrix (columns = world axes of i, j, k)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """A new :class:`Volume` with the same geometry and ``array`` (same ``(z, y, x)`` shape).

        Raises:
            VolumeError: if ``array.shape`` differs from ``self.array.shape``.
        """
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeError(
                f"array shape {array.shape} (z, y, x) does not match {self._name()} "
                f"shape {self.array.shape}"
            )
        return Volume(array, self.spacing, self.origin, self.direction, None, dict(metadata))

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "<volume in memory>"


def _float_tuple(values: ArrayLike, n: int, what: str, name: str) -> tuple[float, ...]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size != n:
        raise VolumeError(f"{name}: {what} needs {n} values, got {arr.size}")
    return tuple(float(v) for v in arr)


def _float3(values: ArrayLike, what: str, name: str) -> tuple[float, float, float]:
    x, y, z = _float_tuple(values, 3, what, name)
    return (x, y, z)


def _points(values: ArrayLike, what: str) -> tuple[np.ndarray, bool]:
    """``values`` as a float64 ``(N, 3)`` array, and whether a single point was given."""
    arr = np.asarray(values, dtype=np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{what} must have shape (3,) or (N, 3), got {np.shape(values)}")
    return arr, single


def index_to_world(vol: Volume, ijk: ArrayLike) -> np.ndarray:
    """Voxel index ``(x, y, z)`` (continuous allowed) -> world LPS mm.

    Args:
        vol: The volume whose geometry is used.
        ijk: One index of shape ``(3,)`` or many of shape ``(N, 3)``, ordered ``(x, y, z)``.

    Returns:
        float64 world points, shape ``(3,)`` or ``(N, 3)`` like the input.
    """
    pts, single = _points(ijk, "ijk")
    world = np.asarray(vol.origin) + (pts * np.asarray(vol.spacing)) @ vol.direction_matrix.T
    return world[0] if single else world


def world_to_index(vol: Volume, xyz: ArrayLike) -> np.ndarray:
    """World LPS mm -> continuous voxel index ``(x, y, z)`` (the inverse of index_to_world).

    Args:
        vol: The volume whose geometry is used.
        xyz: One point of shape ``(3,)`` or many of shape ``(N, 3)``, LPS mm.

    Returns:
        float64 continuous indices ``(x, y, z)``, shape ``(3,)`` or ``(N, 3)`` like the input.
        Integer values are voxel centres; nothing is clipped to the grid.
    """
    pts, single = _points(xyz, "xyz")
    inv = np.linalg.inv(vol.direction_matrix)
    ijk = ((pts - np.asarray(vol.origin)) @ inv.T) / np.asarray(vol.spacing)
    return ijk[0] if single else ijk


def world_to_nearest_index(vol: Volume, xyz: ArrayLike) -> np.ndarray:
    """World LPS mm -> the nearest voxel index ``(x, y, z)`` as int64 (not clipped to the grid).

    Halves round up, as ``SimpleITK.Image.TransformPhysicalPointToIndex`` does. Use
    :func:`index_in_grid` to test whether the result lies inside the volume.
    """
    return _round_half_up(world_to_index(vol, xyz))


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def index_in_grid(vol: Volume, ijk: ArrayLike) -> np.ndarray | bool:
    """Whether integer (or continuous, rounded) indices ``(x, y, z)`` lie inside the grid."""
    pts, single = _points(ijk, "ijk")
    pts = _round_half_up(pts)
    inside = np.all((pts >= 0) & (pts < np.asarray(vol.shape_xyz)), axis=1)
    return bool(inside[0]) if single else inside


def geometry_mismatches(
    a: Volume, b: Volume, atol_mm: float = 1e-3, atol_direction: float = 1e-4
) -> list[str]:
    """Human-readable differences in grid size, spacing, origin and direction (empty if equal).

    Tolerances absorb the float32 rounding of NIfTI headers (about 1e-5 mm).
    """
    faults = []
    if a.array.shape != b.array.shape:
        faults.append(f"shape (z, y, x) {a.array.shape} != {b.array.shape}")
    if not np.allclose(a.spacing, b.spacing, rtol=0, atol=atol_mm):
        faults.append(f"spacing (x, y, z) {_fmt(a.spacing)} != {_fmt(b.spacing)}")
    if not np.allclose(a.origin, b.origin, rtol=0, atol=atol_mm):
        faults.append(f"origin (LPS mm) {_fmt(a.origin)} != {_fmt(b.origin)}")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=atol_direction):
        faults.append(f"direction {_fmt(a.direction)} != {_fmt(b.direction)}")
    return faults


def check_label_matches(label: Volume, image: Volume) -> None:
    """Check that a label volume lies on exactly the image's voxel grid.

    Args:
        label: The label volume (integer values expected).
        image: The image it should annotate.

    Raises:
        VolumeError: naming both files and every difference (shape, spacing, origin,
            direction), or when the label holds non-integer values.
    """
    faults = geometry_mismatches(label, image)
    if faults:
        raise VolumeError(
            f"label {label._name()} does not match image {image._name()}: "
            + "; ".join(faults)
            + ". Resample the label onto the image grid (nearest neighbour) first."
        )
    arr = label.array
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise VolumeError(f"label {label._name()} holds non-integer values (dtype {arr.dtype})")


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def volume_from_sitk(image: sitk.Image, path: str | os.PathLike | None = None) -> Volume:
    """Wrap a 3D scalar ``SimpleITK.Image`` as a :class:`Volume` (array copied, ``(z, y, x)``)."""
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
        path=Path(path) if path is not None else None,
    )


def volume_to_sitk(vol: Volume) -> sitk.Image:
    """A ``SimpleITK.Image`` holding ``vol.array`` with exactly ``vol``'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array), isVector=False)
    image.SetSpacing(vol.spacing)
    image.SetOrigin(vol.origin)
    image.SetDirection(vol.direction)
    return image
