"""The published LiteMedSAM CVPR 2024 3D procedure (volume/baseline.py): the boxes it sends."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam_med.volume.baseline import baseline_box3d


class _Scripted:
    """A segmenter of a (6, 128, 64) volume on a 256 grid (scale 2) that returns ``masks[z]``
    and records the box of every call."""

    num_slices, slice_shape = 6, (128, 64)
    config = SimpleNamespace(img_size=256)

    def __init__(self, masks: np.ndarray) -> None:
        self.masks, self.calls = masks, []

    def predict(self, z, box=None, source=""):
        self.calls.append((z, np.asarray(box).tolist()))
        return SimpleNamespace(mask=self.masks[z].copy())


def test_middle_slice_first_then_previous_mask_boxes_grown_3px_on_the_grid() -> None:
    masks = np.zeros((6, 128, 64), bool)
    masks[2:5, 40:60, 10:30] = True  # slices 2, 3, 4 (slice 1 stays empty)
    seg = _Scripted(masks)
    out = baseline_box3d(seg, [8, 30, 1, 40, 70, 4])
    assert [z for z, _ in seg.calls] == [2, 3, 4, 1]  # middle = 1 + (4 - 1) // 2, up, then down
    assert seg.calls[0][1] == [8, 30, 40, 70]  # the 3D box's 2D box
    # the previous mask's box (x 10..29, y 40..59) x 2 on the grid, -/+ 3 px, / 2 again
    assert seg.calls[1][1] == pytest.approx([8.5, 38.5, 30.5, 60.5])
    assert seg.calls[3][1] == pytest.approx([8.5, 38.5, 30.5, 60.5])  # down from slice 2
    assert np.array_equal(out, masks) and 0 not in [z for z, _ in seg.calls]

    empty = _Scripted(np.zeros((6, 128, 64), bool))
    baseline_box3d(empty, [8, 30, 2, 40, 70, 4])
    assert [b for _, b in empty.calls] == [[8, 30, 40, 70]] * 3  # an empty mask: the 2D box again
    with pytest.raises(ValueError, match="outside the volume"):
        baseline_box3d(seg, [0, 0, 3, 5, 5, 9])


def test_boxes_stay_inside_a_non_square_slice() -> None:
    masks = np.zeros((6, 128, 64), bool)
    masks[1:4, 100:128, 40:64] = True  # touches the right and bottom edges
    seg = _Scripted(masks)
    baseline_box3d(seg, [40, 100, 1, 63, 127, 3])
    for _, (x0, y0, x1, y1) in seg.calls:
        assert 0 <= x0 <= x1 <= 63 and 0 <= y0 <= y1 <= 127
