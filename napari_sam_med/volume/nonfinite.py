"""NaN/Inf voxels: find them in every format, refuse them, or fill them on request.

SimpleITK's NIfTI reader turns NaN/Inf into 0 before we see the array, so for NIfTI the
non-finite voxels are found in the file itself with nibabel (float data only, read in chunks of
slices) and mapped onto the array SimpleITK returns; the other formats keep NaN/Inf and are
checked on the array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import Volume, VolumeError

CHUNK_BYTES = 64 << 20


def nifti_nonfinite_mask(path: Path, component: int | None) -> np.ndarray | None:
    """Boolean ``(z, y, x)`` mask of the NaN/Inf voxels of a NIfTI file's float data (the
    selected ``component`` of 4D data), or None when the data are integers or hold none."""
    import nibabel

    proxy = nibabel.load(str(path)).dataobj
    if np.dtype(proxy.dtype).kind not in "fc" or 0 in proxy.shape:
        return None
    shape = tuple(int(s) for s in proxy.shape)
    mask = np.zeros(shape, bool)
    last = shape[-1]
    per = max(1, CHUNK_BYTES // max(1, mask.size // last * np.dtype(proxy.dtype).itemsize))
    for a in range(0, last, per):
        b = min(a + per, last)
        mask[..., a:b] = ~np.isfinite(np.asarray(proxy[..., a:b]))
    if not mask.any():
        return None
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
        mask = mask.reshape(mask.shape[:3] + (-1,)).any(axis=3)
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
