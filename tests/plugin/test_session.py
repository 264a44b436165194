"""The plugin's Qt-free state: objects, commits without overwrite, undo/redo, log, autosave."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_med.plugin import _persist
from napari_sam_med.plugin._annotate import accept_proposal, record_paint, reject_proposal
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


class FakeClock:
    """A settable monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _paint(s: Session, z: int, ys: slice, xs: slice, value: int):
    """Change the labels as napari's brush does, then report the stroke to the session."""
    region = np.zeros(SHAPE, bool)
    region[z, ys, xs] = True
    index = np.flatnonzero(region)
    before = s.labels.flat[index].copy()
    s.labels.flat[index] = value
    return record_paint(s, index, before)


def test_brush_edits_and_time_spent_are_logged_and_undoable():
    s = Session(SHAPE, (1.0, 1.0, 1.0))
    s.clock = clock = FakeClock()
    s.new_object("lesion")
    clock.now = 110.0
    _prompted(s, 2, (0, 0, 3, 3))  # first interaction at 110 s
    clock.now = 112.0
    s.commit()
    clock.now = 170.0  # a long pause (counts as idle beyond 30 s)
    _paint(s, 2, slice(0, 2), slice(4, 6), 1)  # 4 voxels added to object 1
    clock.now = 175.0
    _paint(s, 3, slice(5, 7), slice(5, 7), 0)  # erasing background: nothing changes
    _paint(s, 2, slice(0, 1), slice(0, 4), 0)  # 4 voxels erased
    clock.now = 180.0
    s.commit()
    assert int((s.labels == 1).sum()) == 16 + 4 - 4, "the re-commit keeps the brush edits"
    o = s.obj(1)
    assert o.edits == {2: {"added": 4, "removed": 4}}
    assert o.time_spent() == {"seconds": 70.0, "active_seconds": 2.0 + 30.0 + 5.0 + 5.0,
                              "interactions": 5}  # fmt: skip
    log = _persist.session_log(s)
    json.dumps(log)
    paints = [e for e in log["events"] if e["action"] == "paint"]
    assert len(paints) == 2 and paints[0]["objects"] == [
        {"label": 1, "z": 2, "added": 4, "removed": 0}
    ]
    commit = log["events"][-1]
    assert commit["time"]["seconds"] == 70.0 and commit["edited_slices"] == [2]
    entry = log["objects"][0]
    assert entry["edits"] == {"2": {"added": 4, "removed": 4}} and entry["prompts"]["2"]["box"]
    # undo the commit and the erase: the erased voxels come back, in labels and the object
    s.undo()
    s.undo()
    assert int((s.labels == 1).sum()) == 20 and s.obj(1).edits[2]["removed"] == 0


def test_painting_a_value_without_object_creates_one_and_replays():
    s = Session(SHAPE, (1.0, 1.0, 1.0))
    s.new_object("a")
    _prompted(s, 1, (0, 0, 2, 2))
    s.commit()
    _paint(s, 1, slice(1, 3), slice(1, 3), 4)  # over object 1 and background
    assert [o.label for o in s.objects] == [1, 4] and s.obj(4).source == "painted"
    assert s.obj(1).edits[1] == {"added": 0, "removed": 4}
    assert int((s.labels == 1).sum()) == 9 - 4 and int((s.labels == 4).sum()) == 4
    s.commit(1)  # re-committing object 1 does not take its painted-over voxels back
    assert int((s.labels == 4).sum()) == 4
    log = _persist.session_log(s)

    class NoModel:  # this log needs no prediction except the prompt
        model_info, preset = {"name": "none"}, "minmax"

        @staticmethod
        def preview(z, prompt):
            return _preview(z, (0, 0, 2, 2))

    again = _persist.replay(log, NoModel(), Session(SHAPE, (1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(again.labels, s.labels)


def test_proposals_accepted_become_objects_and_rejected_stay_as_negatives():
    from napari_sam_med.plugin._proposals import Proposal, ProposalQueue
    from napari_sam_med.volume.log_state import final_objects
    from napari_sam_med.volume.session_log import validate_session_log

    s = Session(SHAPE, (1.0, 1.0, 1.0))
    s.clock = clock = FakeClock()
    s.new_object("manual")
    _prompted(s, 2, (0, 0, 3, 3))
    s.commit()
    good, bad = _pred(2, (5, 5, 8, 8), 0.93), _pred(2, (0, 6, 2, 9), 0.81)
    queue = ProposalQueue(
        [
            Proposal(2, good, {"box": [5.0, 5.0, 8.0, 8.0]}),
            Proposal(2, bad, {"box": [0.0, 6.0, 2.0, 9.0]}),
        ],
        clock,
    )
    clock.now += 4.0
    p, seconds = queue.take(accepted=True)
    obj = accept_proposal(s, p, seconds)
    assert obj.label == 2 and obj.committed and obj.source == "proposal"
    assert int((s.labels == 2).sum()) == 16 and s.current == 2
    clock.now += 1.5
    p, seconds = queue.take(accepted=False)
    reject_proposal(s, p, seconds)
    assert queue.current is None and (queue.accepted, queue.rejected) == (1, 1)
    log = validate_session_log(json.loads(json.dumps(_persist.session_log(s))))
    acc, rej = log["events"][-2:]
    assert acc["action"] == "accept_proposal" and acc["seconds"] == 4.0 and acc["iou"] == 0.93
    assert rej["action"] == "reject_proposal" and rej["seconds"] == 1.5
    assert rej["rle"]["size"] == [10, 12] and sum(rej["rle"]["counts"]) == 120
    state = final_objects(log)
    assert state.objects[2].source == "proposal" and state.commit_order == [1, 2]
    s.undo()  # accepting is one undoable change
    assert [o.label for o in s.objects] == [1] and not (s.labels == 2).any()
    with pytest.raises(ValueError, match="no proposal left"):
        queue.take(accepted=True)


def test_a_replayed_review_gives_the_same_labels_and_log_decisions():
    from napari_sam_med.plugin._proposals import Proposal

    s = Session(SHAPE, (1.0, 1.0, 1.0))
    s.new_object("manual")
    accept_proposal(s, Proposal(2, _pred(2, (0, 0, 2, 2)), {"box": [0.0, 0.0, 2.0, 2.0]}), 3.0)
    reject_proposal(s, Proposal(2, _pred(2, (5, 5, 8, 8)), {"box": [5.0, 5.0, 8.0, 8.0]}), 1.0)

    class Boxes:  # "predicts" exactly the box it is given
        model_info, preset = {"name": "boxes"}, "minmax"

        @staticmethod
        def preview(z, prompt):
            x0, y0, x1, y1 = (int(v) for v in prompt["box"])
            return _preview(z, (x0, y0, x1, y1))

    again = _persist.replay(_persist.session_log(s), Boxes(), Session(SHAPE, (1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(again.labels, s.labels)
    assert [e["action"] for e in again.events][-2:] == ["accept_proposal", "reject_proposal"]
    assert again.obj(2).source == "proposal"


def test_version_1_logs_still_load(tmp_path):
    from napari_sam_med.volume.log_state import final_objects

    old = {"format": "napari-sam-med-session", "version": 1, "image": {"name": "x"},
           "objects": [{"label": 1, "name": "a", "voxels": 16}],
           "events": [{"action": "new_object", "label": 1, "name": "a", "color": [1, 0, 0, 1]},
                      {"action": "prompt", "label": 1, "z": 2, "prompt": {"box": [0, 0, 3, 3]},
                       "model": "tiny", "preset": "minmax"},
                      {"action": "commit", "label": 1}]}  # fmt: skip
    path = tmp_path / "old.session.json"
    path.write_text(json.dumps(old))
    log = _persist.load_log(path)
    state = final_objects(log)
    assert state.objects[1].model_prompts == {2: {"box": [0, 0, 3, 3]}}
    assert state.commit_order == [1]
