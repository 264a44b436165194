"""Which clicks of a correction travel on to the slices beside it (``carry_clicks``).

A corrective click says "this pixel is wrong". When re-propagation reaches a neighbour whose
earlier mask is wrong at the same pixel in the same way (a negative click on a pixel that mask
still covers: the leak goes on; a positive click on a pixel it misses: the miss goes on), the
click is passed to that neighbour's prediction too, and travels on while that holds.

A tumour widens towards its middle, so a negative click travels only away from the object's
middle slice (towards its nearer end, where a leak outside the tumour goes on; towards the
middle the tumour itself may cover the pixel); a positive click travels both ways. (Chosen on
training patients against negative-outward/positive-inward and no direction rule; the model
card has the table.)
"""

from __future__ import annotations

import numpy as np


def still_wrong(
    points: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The clicks (``Nx2`` ``(x, y)`` pixels, labels 1/0) that ``mask`` gets wrong the same way.

    No mask (the slice had no result): none travel.
    """
    if mask is None or not len(points):
        return points[:0], labels[:0]
    h, w = mask.shape
    xs = np.clip(np.rint(points[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.rint(points[:, 1]).astype(int), 0, h - 1)
    covered = mask[ys, xs]
    keep = np.where(labels > 0, ~covered, covered)
    return points[keep], labels[keep]


def as_clicks(
    points: np.ndarray | None, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """A correction's new clicks as ``(Nx2 float32 points, N int labels)`` (labels default
    to positive); None when there are none."""
    pts = None if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    if pts is None or not len(pts):
        return None
    lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels, np.int64)
    return pts, lab


def heading(
    clicks: tuple[np.ndarray, np.ndarray] | None, z: int, middle: float, step: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The clicks on slice ``z`` that travel in direction ``step`` (+1/-1) for an object whose
    middle slice is ``middle``: positive ones both ways, negative ones away from the middle
    (both ways from the middle slice itself)."""
    if clicks is None:
        return None
    points, labels = clicks
    outward = (z - middle) * step >= 0
    keep = (labels > 0) | outward
    return (points[keep], labels[keep]) if keep.any() else None
