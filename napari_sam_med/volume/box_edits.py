"""Clicks as edits of a box: for models trained on boxes only (``click_mode="box"``), and the
box a click-trained model gets with its clicks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .prompt import SlicePrompt


def edit_box(box: np.ndarray, points: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """``box`` ``[x0, y0, x1, y1]`` edited by clicks (see ``PropagationSettings.click_mode``)."""
    b = np.asarray(box, dtype=np.float32).copy()
    for (x, y), lab in zip(points, labels, strict=True):
        inside = b[0] <= x <= b[2] and b[1] <= y <= b[3]
        if lab == 1 and not inside:
            b[:2] = np.minimum(b[:2], [x - margin, y - margin])
            b[2:] = np.maximum(b[2:], [x + margin, y + margin])
        elif lab == 0 and inside:
            gaps = [x - b[0], y - b[1], b[2] - x, b[3] - y]
            side = int(np.argmin(gaps))
            b[side] = (x, y, x, y)[side] + (1.0 if side < 2 else -1.0)
    return b


def take_in_clicks(
    box: np.ndarray, points: np.ndarray, labels: np.ndarray, margin: float
) -> np.ndarray:
    """``box`` grown to hold every positive click (with ``margin``); negative clicks leave it:
    a model trained with clicks trims with the click itself, but its box must not exclude
    what a positive click says is object."""
    keep = np.asarray(labels).ravel() == 1
    return edit_box(box, np.asarray(points)[keep], np.asarray(labels).ravel()[keep], margin)


def union_box(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """The smallest ``[x0, y0, x1, y1]`` holding both boxes."""
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def box_and_clicks(p: SlicePrompt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box, points and labels of a prompt that has a box and clicks."""
    box, pts, lab = p.arrays()
    if box is None or pts is None or lab is None:
        raise ValueError(f"expected a box and clicks; got {p.to_json()}")
    return box, pts, lab
