"""3D click simulation and starts on hand-made masks: where the click lands, its sign, its slice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_med.bench3d.clicks import (
    Click,
    box3d_of,
    interior_point,
    largest_slice,
    next_click,
    start_prompt,
)

pytest.importorskip("scipy")


def _blob() -> np.ndarray:
    """A (9, 30, 40) ground truth: slices 2..6, the largest (z=4) an 11 x 11 square."""
    gt = np.zeros((9, 30, 40), bool)
    gt[2:7, 10:17, 12:23] = True  # 7 x 11 on slices 2..6
    gt[4, 8:19, 12:23] = True  # 11 x 11 on slice 4, a unique centre (y=13, x=17)
    return gt


def test_everything_missed_gives_a_positive_click_at_the_centre_of_the_largest_slice() -> None:
    gt = _blob()
    c = next_click(np.zeros_like(gt), gt)
    assert c == Click(z=4, x=17, y=13, label=1, size=int(gt.sum()))


def test_the_largest_error_component_wins_and_a_leak_gets_a_negative_click() -> None:
    gt = _blob()
    pred = gt.copy()
    pred[0:2, 0:5, 30:35] = True  # leak: 2 x 5 x 5 = 50 voxels, slices 0-1 (a tie: lowest z)
    pred[4, 8:19, 12:15] = False  # miss: 11 x 3 = 33 voxels, slice 4
    c = next_click(pred, gt)
    assert (c.z, c.label, c.size) == (0, 0, 50)
    assert (c.x, c.y) == (32, 2)  # the centre of the 5 x 5 leak (rows 0-4, columns 30-34)
    assert pred[c.z, c.y, c.x] and not gt[c.z, c.y, c.x]

    pred[0:2] = gt[0:2]  # the leak fixed: now the miss is the largest error
    c = next_click(pred, gt)
    assert (c.z, c.label, c.size) == (4, 1, 33)
    assert c.x == 13 and 9 <= c.y <= 17 and gt[c.z, c.y, c.x] and not pred[c.z, c.y, c.x]


def test_click_goes_to_the_largest_slice_of_a_3d_component() -> None:
    gt = np.zeros((8, 20, 20), bool)
    gt[1:7, 2:18, 2:18] = True
    pred = gt.copy()
    pred[2:6, 5:9, 5:9] = False  # a miss of 4 slices, 4 x 4 each ...
    pred[4, 4:12, 4:12] = False  # ... much larger on slice 4 (8 x 8, centre 7.5 -> 7 or 8)
    c = next_click(pred, gt)
    assert c.z == 4 and c.label == 1 and 7 <= c.x <= 8 and 7 <= c.y <= 8


def test_components_use_26_connectivity_and_perfect_predictions_need_no_click() -> None:
    gt = np.zeros((4, 10, 10), bool)
    pred = gt.copy()
    pred[1, 2, 2] = pred[2, 3, 3] = True  # two leak voxels touching only by a corner
    pred[1, 8, 8] = True  # a single far voxel
    c = next_click(pred, gt)
    assert c.size == 2 and c.label == 0 and (c.z, c.y, c.x) in ((1, 2, 2), (2, 3, 3))
    assert next_click(gt, gt) is None
    with pytest.raises(ValueError, match="same"):
        next_click(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 4), bool))


def test_ties_are_broken_by_the_seeded_generator() -> None:
    region = np.zeros((5, 8), bool)
    region[2, 1:7] = True  # a 1 x 6 line: every pixel is a maximum of the distance transform
    assert interior_point(region) == (1, 2)  # without a generator: the first in raster order
    picks = {interior_point(region, np.random.default_rng(s)) for s in range(12)}
    assert len(picks) > 1 and all(y == 2 and 1 <= x <= 6 for x, y in picks)
    a = interior_point(region, np.random.default_rng(7))
    assert a == interior_point(region, np.random.default_rng(7))


def test_starts_box3d_box2d_and_point() -> None:
    gt = _blob()
    assert box3d_of(gt) == [12, 8, 2, 22, 18, 6]
    assert largest_slice(gt) == 4
    assert start_prompt("box3d", gt) == (None, {"box3d": [12, 8, 2, 22, 18, 6]})
    assert start_prompt("box2d", gt) == (4, {"box": [12.0, 8.0, 22.0, 18.0]})
    assert start_prompt("point", gt) == (4, {"points": [[17.0, 13.0]], "point_labels": [1]})
    with pytest.raises(ValueError, match="start 'scribble'"):
        start_prompt("scribble", gt)
    with pytest.raises(ValueError, match="empty"):
        box3d_of(np.zeros((2, 2, 2), bool))
