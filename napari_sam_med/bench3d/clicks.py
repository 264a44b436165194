"""Simulated prompts of the 3D interactive benchmark (CVPR 2025 interactive 3D protocol).

Coordinates: masks are ``(Z, Y, X)`` bool arrays; prompts are in the engine's order, points
``(x, y)`` pixels of slice ``z`` and boxes ``[x0, y0, x1, y1]`` / ``[x0, y0, z0, x1, y1, z1]``
with inclusive voxel indices.

* Starts: the label's 3D box; one 2D box on its largest slice; one positive click at the
  interior-most voxel (2D distance-transform maximum) of its largest slice.
* Corrections (:func:`next_click`): the misses (``gt & ~pred``) and the leaks
  (``pred & ~gt``) are split into 3D connected components (26-connectivity, as the challenge's
  evaluation); the largest component of all (in voxels; a miss wins a tie) gets the click, on
  its largest slice (the lowest such slice on a tie), at the maximum of that slice's 2D
  distance transform (in-plane spacing; a seeded random choice among equal maxima);
  positive in a miss, negative in a leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..masks import mask_box
from ..metrics import ndimage
from ..volume.prompt import SlicePrompt
from . import STARTS


@dataclass(frozen=True)
class Click:
    """One simulated click: slice ``z``, pixel ``(x, y)``, ``label`` 1 (miss) or 0 (leak);
    ``size`` is the voxel count of the error component it corrects."""

    z: int
    x: int
    y: int
    label: int
    size: int = 0

    def as_list(self) -> list[int]:
        """``[z, x, y, label]`` (JSON-friendly)."""
        return [self.z, self.x, self.y, self.label]


def box3d_of(mask: np.ndarray) -> list[int]:
    """Inclusive ``[x0, y0, z0, x1, y1, z1]`` of a non-empty ``(Z, Y, X)`` mask."""
    zs, ys, xs = np.nonzero(mask)
    if zs.size == 0:
        raise ValueError("the mask is empty: no 3D box")
    return [
        int(xs.min()),
        int(ys.min()),
        int(zs.min()),
        int(xs.max()),
        int(ys.max()),
        int(zs.max()),
    ]


def largest_slice(mask: np.ndarray) -> int:
    """The slice of a ``(Z, Y, X)`` mask with the most voxels (the lowest on a tie)."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(1)))


def interior_point(
    region: np.ndarray,
    rng: np.random.Generator | None = None,
    sampling: Sequence[float] = (1.0, 1.0),
) -> tuple[int, int]:
    """``(x, y)`` of the maximum of a non-empty ``(Y, X)`` region's distance transform (the
    pixel farthest from its border, the image border counting as border). Equal maxima are
    broken by ``rng`` (the first in raster order without one)."""
    if not region.any():
        raise ValueError("the region is empty: no interior point")
    dist = ndimage().distance_transform_edt(np.pad(region, 1), sampling=sampling)[1:-1, 1:-1]
    best = np.argwhere(dist == dist.max())
    y, x = best[int(rng.integers(len(best)))] if rng is not None and len(best) > 1 else best[0]
    return int(x), int(y)


def start_prompt(
    start: str, gt: np.ndarray, rng: np.random.Generator | None = None, sampling=(1.0, 1.0)
) -> tuple[int | None, dict | SlicePrompt]:
    """The starting prompt of ``start`` for a ``(Z, Y, X)`` ground truth.

    Returns:
        ``(None, {"box3d": [...]})`` for ``box3d``; ``(z, key_prompt)`` (a
        :class:`SlicePrompt`) for ``box2d`` (a box) and ``point`` (one positive click).
    """
    if start == "box3d":
        return None, {"box3d": box3d_of(gt)}
    z = largest_slice(gt)
    if start == "box2d":
        return z, SlicePrompt(box=mask_box(gt[z]))
    if start == "point":
        x, y = interior_point(gt[z], rng, sampling)
        return z, SlicePrompt(points=((x, y),), point_labels=(1,))
    raise ValueError(f"start {start!r}; expected one of {', '.join(STARTS)}")


def _largest_component(err: np.ndarray) -> tuple[int, np.ndarray | None]:
    comp, n = ndimage().label(err, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return 0, None
    sizes = np.bincount(comp.ravel())[1:]
    i = int(np.argmax(sizes))
    return int(sizes[i]), comp == i + 1


def next_click(
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator | None = None,
    sampling: Sequence[float] = (1.0, 1.0),
) -> Click | None:
    """The corrective click for a ``(Z, Y, X)`` prediction (see the module docstring).

    Args:
        pred, gt: bool masks of the same shape.
        rng: breaks ties between equal distance maxima (same seed, same clicks).
        sampling: in-plane pixel size ``(sy, sx)`` for the 2D distance transform.

    Returns:
        The click, or None when ``pred`` equals ``gt`` (nothing to correct).
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same (Z, Y, X) shape")
    union = pred | gt
    if not (pred ^ gt).any():
        return None
    zs, ys, xs = (np.nonzero(union.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    p, g = pred[box], gt[box]
    best: tuple[int, np.ndarray | None, int] = (0, None, 1)
    for err, label in ((g & ~p, 1), (p & ~g, 0)):
        size, region = _largest_component(err)
        if size > best[0]:
            best = (size, region, label)
    size, region, label = best
    assert region is not None  # there is an error, so some component exists
    z = largest_slice(region)
    x, y = interior_point(region[z], rng, sampling)
    return Click(int(z + zs[0]), int(x + xs[0]), int(y + ys[0]), label, size)
