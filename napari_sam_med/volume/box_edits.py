"""Clicks as edits of a box, for models trained on boxes only (``click_mode="box"``)."""

from __future__ import annotations

import numpy as np


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
