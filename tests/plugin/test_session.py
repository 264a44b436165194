"""The plugin's Qt-free state: objects, commits without overwrite, undo/redo, log, autosave."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_med.plugin import _persist
from napari_sam_med.plugin._engine import Preview
from napari_sam_med.plugin._session import Session
from napari_sam_med.volume.slices import SlicePrediction

SHAPE = (6, 10, 12)


def _pred(z: int, box: tuple[int, int, int, int], iou: float = 0.9) -> SlicePrediction:
    x0, y0, x1, y1 = box
    mask = np.zeros(SHAPE[1:], bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return SlicePrediction(z, mask, np.zeros((4, 4), np.float32), iou, 0.95, "prompt")


def _preview(z: int, *boxes: tuple[int, int, int, int]) -> Preview:
    cands = [_pred(z, b, 0.9 - 0.1 * i) for i, b in enumerate(boxes)]
    return Preview(z, {"box": [0, 0, 3, 3]}, cands, [str(i + 1) for i in range(len(cands))], 0)


def _prompted(session: Session, z: int, *boxes) -> None:
    session.set_prompt(session.current, z, {"box": list(boxes[0])}, _preview(z, *boxes))


def test_commit_never_overwrites_other_objects():
    s = Session(SHAPE, (1.0, 1.0, 2.0))
    s.new_object("a")
    _prompted(s, 2, (0, 0, 5, 5))
    assert s.commit() == 36
    s.new_object("b")
    _prompted(s, 2, (3, 3, 8, 8))  # overlaps object a on [3..5] x [3..5]
    s.commit()
    assert (s.labels[2, :6, :6] == 1).all(), "object 1's voxels must stay"
    assert int((s.labels == 2).sum()) == 36 - 9
    assert s.summary(1)["volume_ml"] == pytest.approx(36 * 2.0 / 1000)
    # Re-committing object a after it shrank clears only its own voxels.
    s.select(1)
    _prompted(s, 2, (0, 0, 1, 1))
    s.commit()
    assert int((s.labels == 1).sum()) == 4
    assert int((s.labels == 2).sum()) == 27


def test_undo_redo_several_levels_and_delete_relabel():
    s = Session(SHAPE)
    s.new_object()
    _prompted(s, 1, (0, 0, 2, 2), (0, 0, 4, 4), (0, 0, 6, 6))
    s.cycle_candidate(1)
    assert s.obj().seg.slices[1].area == 25
    s.commit()
    s.relabel(1, 7)
    assert set(np.unique(s.labels)) == {0, 7}
    snapshots = []
    for _ in range(4):
        snapshots.append((s.labels.copy(), s.current))
        assert s.undo() is not None
    assert s.obj().seg.slices == {} and not s.labels.any()
    for labels, current in reversed(snapshots):
        assert s.redo() is not None
        np.testing.assert_array_equal(s.labels, labels)
        assert s.current == current
    s.delete_object(7)
    assert not s.labels.any() and s.objects == []
    s.undo()
    assert set(np.unique(s.labels)) == {0, 7}
    with pytest.raises(ValueError, match="already used"):
        s.new_object(label=7)


def test_relabel_refuses_used_value():
    s = Session(SHAPE)
    s.new_object()
    s.new_object()
    with pytest.raises(ValueError, match="already used"):
        s.relabel(2, 1)


def test_log_autosave_and_restore(tmp_path):
    s = Session(SHAPE, (1.0, 1.0, 1.0), {"name": "img"})
    s.new_object("lesion")
    _prompted(s, 3, (2, 2, 5, 6))
    s.commit()
    log = _persist.session_log(s)
    json.dumps(log)  # JSON-friendly
    actions = [e["action"] for e in log["events"]]
    assert actions == ["new_object", "prompt", "commit"]
    assert log["events"][1]["z"] == 3 and log["events"][1]["prompt"]["box"] == [2, 2, 5, 6]
    _persist.autosave(tmp_path, "abc", s.labels, log)
    found = _persist.find_autosave(tmp_path, "abc")
    assert found is not None
    fresh = Session(SHAPE, (1.0, 1.0, 1.0))
    _persist.restore(fresh, found)
    np.testing.assert_array_equal(fresh.labels, s.labels)
    assert fresh.obj(1).name == "lesion" and fresh.summary(1)["voxels"] == 20
    assert _persist.find_autosave(tmp_path, "other") is None


def test_load_log_rejects_foreign_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a napari-sam-med session log"):
        _persist.load_log(bad)
