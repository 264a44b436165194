"""Segmentation metrics, one place for the package: Dice, normalised surface Dice (NSD) at a
tolerance in mm, and the AUC of a metric-vs-clicks curve (used by evaluate, replay, the 3D
benchmark, propagation and the benchmarks/ scripts).

NSD follows the definition of Nikolov et al. (DeepMind ``surface-distance``) as MONAI's
``compute_surface_dice`` computes it without sub-voxel surfaces: the surface of a mask is its
voxels that an erosion by the face-neighbour cross removes (scipy's default); NSD is the
share of both surfaces' voxels that lie within ``tolerance`` mm (Euclidean, physical
spacing) of the other surface. A test checks it against
MONAI on random shapes with anisotropic spacing (MONAI itself is never imported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

__all__ = ["dice", "nsd", "auc", "surface", "ndimage", "NSD_TOLERANCE_MM"]

NSD_TOLERANCE_MM = 2.0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


def ndimage() -> ModuleType:
    """``scipy.ndimage`` (the ``eval`` extra), with a clear message when scipy is missing."""
    try:
        from scipy import ndimage as nd
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "the click simulator needs scipy: pip install 'napari-sam-med[eval]'"
        ) from err
    return nd


def _crop_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``pad`` voxels (kept in the array)."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.nonzero(mask.any(axis=other))[0]
        out.append(slice(max(int(idx[0]) - pad, 0), int(idx[-1]) + pad + 1))
    return tuple(out)


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a bool mask: those an erosion by the face-neighbour cross removes
    (voxels on the array's border count as surface)."""
    return mask & ~ndimage().binary_erosion(mask, border_value=0)


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance: float = NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice of two bool masks.

    Args:
        pred, gt: ``(Z, Y, X)`` (or any N-D) bool masks of the same shape.
        spacing: voxel size in mm per array axis, in the arrays' axis order (for a ``(z, y, x)``
            array that is ``Volume.spacing[::-1]``).
        tolerance: the distance in mm up to which a surface voxel counts as matched.

    Returns:
        NSD in ``[0, 1]``: 1.0 when both masks are empty, 0.0 when only one is.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    sp = [float(v) for v in np.asarray(spacing, dtype=float).ravel()]
    if len(sp) != pred.ndim or min(sp) <= 0:
        raise ValueError(f"spacing {sp}: expected {pred.ndim} positive sizes in mm")
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    # every surface voxel lies inside the union's box, so distances computed there are exact
    box = _crop_box(pred | gt)
    sp_pred, sp_gt = surface(pred[box]), surface(gt[box])
    nd = ndimage()
    to_gt = nd.distance_transform_edt(~sp_gt, sampling=sp)[sp_pred]
    to_pred = nd.distance_transform_edt(~sp_pred, sampling=sp)[sp_gt]
    matched = int((to_gt <= tolerance).sum()) + int((to_pred <= tolerance).sum())
    return matched / (to_gt.size + to_pred.size)


def auc(values: Sequence[float]) -> float:
    """Area under a metric-vs-clicks curve: the trapezoidal rule with unit steps.

    As the CVPR 2025 interactive 3D challenge computes DSC_AUC / NSD_AUC, pass the values
    after clicks 1..5 (not the box step): the area then lies in ``[0, 4]``.
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size < 2:
        raise ValueError(f"an AUC needs at least two values; got {v.size}")
    return float(((v[1:] + v[:-1]) / 2.0).sum())
