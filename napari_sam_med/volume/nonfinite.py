"""NaN/Inf voxels: find them in every format, refuse them, or fill them on request.

SimpleITK's NIfTI reader turns NaN/Inf into 0 before we see the array, so for NIfTI the
non-finite voxels are found in the file itself (header through nibabel; float data only, one
streamed pass) and mapped onto the array SimpleITK returns; the other formats keep NaN/Inf and
are checked on the array.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from .geometry import Volume, VolumeError

if TYPE_CHECKING:
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.dataobj_images import DataobjImage

CHUNK_BYTES = 64 << 20


def nifti_nonfinite_mask(path: Path, component: int | None) -> np.ndarray | None:
    """Boolean ``(z, y, x)`` mask of the NaN/Inf voxels of a NIfTI file's float data (the
    selected ``component`` of 4D data), or None when the data are integers or hold none.

    One sequential pass over the stored values (``.nii.gz`` decompressed as a stream), in
    chunks of :data:`CHUNK_BYTES`; memory beyond a chunk only when there is something to report.
    """
    import nibabel
    from nibabel.openers import ImageOpener

    image = cast("DataobjImage", nibabel.load(str(path)))  # NIfTI: Nifti1Image/Nifti2Image
    proxy = cast("ArrayProxy", image.dataobj)  # file-backed: a proxy, not an array
    dtype = np.dtype(proxy.dtype)  # with the file's byte order
    shape = tuple(int(s) for s in proxy.shape)
    total = int(np.prod(shape, dtype=np.int64))
    if dtype.kind not in "fc" or total == 0:
        return None
    step = max(1, CHUNK_BYTES // dtype.itemsize)
    bad = []
    with ImageOpener(str(path)) as fh:
        fh.seek(int(proxy.offset))
        for start in range(0, total, step):
            raw = fh.read(min(step, total - start) * dtype.itemsize)
            values = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
            idx = np.flatnonzero(~np.isfinite(values))
            if idx.size:
                bad.append(idx + start)
            if values.size < min(step, total - start):
                break  # short file: the size check (header_guard) reports it
    if not bad:
        return None
    mask = np.zeros(shape, bool, order="F")
    mask.reshape(-1, order="F")[np.concatenate(bad)] = True  # NIfTI stores x fastest
    return _as_zyx(mask, component)


def _as_zyx(mask: np.ndarray, component: int | None) -> np.ndarray:
    """nibabel's ``(x, y, z[, t[, c]])`` mask as SimpleITK's ``(z, y, x)`` array of the chosen
    volume (data are not reoriented by either library: only the axis order differs)."""
    k = component or 0
    if mask.ndim < 3:
        mask = mask.reshape(mask.shape + (1,) * (3 - mask.ndim))
    elif mask.ndim == 4:
        mask = mask[..., min(k, mask.shape[3] - 1)]
    elif mask.ndim == 5:
        mask = mask[:, :, :, 0, min(k, mask.shape[4] - 1)]
    elif mask.ndim != 3:
        # with an axis, ``any`` returns an array (the stubs allow a scalar too)
        mask = cast(np.ndarray, mask.reshape(mask.shape[:3] + (-1,)).any(axis=3))
    return np.ascontiguousarray(mask.T)


def check_finite(vol: Volume, mask: np.ndarray | None, fill: float | None) -> None:
    """Refuse NaN/Inf voxels (with their count), or replace them with ``fill`` in place.

    Args:
        vol: the volume as read.
        mask: NaN/Inf positions known from the file (NIfTI), ``(z, y, x)``, or None.
        fill: the replacement value the user asked for, or None to refuse.

    Raises:
        VolumeError: non-finite voxels and no ``fill``.
    """
    arr = vol.array
    if mask is not None and mask.shape != arr.shape:
        raise VolumeError(
            f"{vol._name()}: NaN/Inf voxels found in the file, laid out as {mask.shape}, do not "
            f"map onto the image read, {arr.shape}; fix the file"
        )
    detail = ""
    if mask is None:
        if arr.dtype.kind not in "fc":
            return
        mask = ~np.isfinite(arr)
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        detail = f" ({n_nan} NaN, {int(np.count_nonzero(mask)) - n_nan} Inf)"
    bad = int(np.count_nonzero(mask))
    if not bad:
        return
    if fill is None:
        raise VolumeError(
            f"{vol._name()}: {bad} of {arr.size} voxels are not finite{detail}; fix the file, "
            "or replace them explicitly with --nonfinite-fill VALUE "
            "(read_volume(..., nonfinite_fill=VALUE)), or pass allow_nonfinite=True"
        )
    if arr.dtype.kind not in "fc":
        vol.array = arr.astype(np.float32)
    vol.array[mask] = fill
    vol.metadata["nonfinite_filled"] = {"count": bad, "value": float(fill)}
