"""Boxes of 2D masks, one place for the package: the tight box (click simulators, the 3D
benchmark) and the box grown by a margin and kept inside the image (prompts derived from a
mask: propagation, proposals, the plugin's "box from the object").

Boxes are ``(x0, y0, x1, y1)`` in SAM order, inclusive pixel indices.
"""

from __future__ import annotations

import numpy as np


def box_around(mask: np.ndarray, margin: float = 0.0) -> list[float]:
    """``[x0, y0, x1, y1]`` around a non-empty ``(H, W)`` mask, grown by ``margin`` pixels and
    clipped to the image."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError(f"box_around: the {mask.shape} mask is empty; expected a pixel set")
    h, w = mask.shape
    return [
        float(max(xs.min() - margin, 0)),
        float(max(ys.min() - margin, 0)),
        float(min(xs.max() + margin, w - 1)),
        float(min(ys.max() + margin, h - 1)),
    ]


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight ``(x0, y0, x1, y1)`` box (inclusive pixel indices, float32) of a non-empty
    ``(H, W)`` mask."""
    return np.array(box_around(mask), dtype=np.float32)
