"""When propagation without a z-range stops: the object has ended or the mask has left it."""

from __future__ import annotations

import numpy as np

from .propagation_settings import PropagationSettings
from .slices import SlicePrediction, SliceSegmenter


def stop_reason(
    seg: SliceSegmenter,
    settings: PropagationSettings,
    thresholds: tuple[float, float],
    prev: SlicePrediction,
    pred: SlicePrediction,
) -> str | None:
    """Why ``pred`` (the slice after ``prev``) ends the object, or None to go on.

    ``thresholds``: ``(min_iou, min_stability)`` for this model (``Propagator.thresholds``).
    Reasons: ``empty``, ``low_iou``, ``low_stability``, ``area_jump``, ``centroid_jump`` and
    ``intensity_jump`` (see :class:`PropagationSettings`)."""
    s = settings
    min_iou, min_stability = thresholds
    if pred.area < s.min_area:
        return "empty"
    if pred.iou < min_iou:
        return "low_iou"
    if pred.stability < min_stability:
        return "low_stability"
    if pred.area > s.max_area_growth * max(prev.area, 1):
        return "area_jump"
    c0, c1 = _centroid(prev.mask), _centroid(pred.mask)
    diam = 2.0 * np.sqrt(max(prev.area, 1) / np.pi)
    if np.hypot(*(c1 - c0)) > s.max_centroid_shift * diam:
        return "centroid_jump"
    before = seg.slice_image(prev.z)[prev.mask]
    after = seg.slice_image(pred.z)[pred.mask]
    spread = max(float(before.std()), s.min_intensity_spread)
    if abs(float(np.median(after)) - float(np.median(before))) > s.max_intensity_jump * spread:
        return "intensity_jump"
    return None


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.zeros(2)
