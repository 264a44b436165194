"""``volume.session_log``: validation of session logs, their final state, and the replay on a
model (module and ``sam-med replay``), with the plugin's Qt-free session making the log."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.volume.log_replay import compare_labels, replay_objects
from napari_sam_med.volume.log_state import final_objects
from napari_sam_med.volume.session_log import load_session_log, validate_session_log


def _log(*events, **extra) -> dict:
    return {"format": "napari-sam-med-session", "version": 2, "events": list(events), **extra}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "other"}, "not a napari-sam-med session log"),
        (_log(version=99), "version 99"),
        ({"format": "napari-sam-med-session"}, "no 'events' list"),
        (_log("x"), "event 0: expected an object with an 'action'"),
        (_log({"action": "explode"}), "event 0 (explode): unknown action"),
        (_log({"action": "prompt", "label": 1, "z": -2, "prompt": {}}), "'z' must be a slice"),
        (_log({"action": "prompt", "label": 1, "z": 0, "prompt": {"box": [1, 2]}}), "'box'"),
        (
            _log(
                {
                    "action": "prompt",
                    "label": 1,
                    "z": 0,
                    "prompt": {"points": [[1, 2]], "point_labels": [1, 0]},
                }
            ),
            "one 0 or 1 per point",
        ),  # fmt: skip
        (_log({"action": "commit", "label": True}), "'label' must be an integer >= 1"),
        (_log({"action": "relabel", "label": 1, "new_label": 0}), "'new_label'"),
        (_log({"action": "paint", "edits": [{"z": 0}]}), "'edits'"),
        (_log(objects=[{"name": "x"}]), "'objects' must be a list"),
    ],
)
def test_malformed_logs_are_rejected_with_the_event_and_value(data, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_session_log(data, "s.json")


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.session.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.session.json: cannot read the session log"):
        load_session_log(bad)
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        load_session_log(tmp_path / "missing.json")


def test_final_objects_follow_undo_redo_relabel_and_delete() -> None:
    box = {"box": [1.0, 1.0, 5.0, 5.0]}
    log = _log(
        {"action": "new_object", "label": 1, "name": "a"},
        {"action": "prompt", "label": 1, "z": 2, "prompt": box},
        {"action": "prompt", "label": 1, "z": 3, "prompt": {"points": [[2, 2]],
                                                             "point_labels": [1]}},
        {"action": "candidate", "label": 1, "z": 3, "index": 2},
        {"action": "undo"},  # the candidate choice
        {"action": "segment3d", "label": 1},
        {"action": "commit", "label": 1},
        {"action": "new_object", "label": 2, "name": "b"},
        {"action": "prompt", "label": 2, "z": 4, "prompt": box,
         "model_prompt": {**box, "points": [[3, 3]], "point_labels": [0]}},
        {"action": "commit", "label": 2},
        {"action": "relabel", "label": 2, "new_label": 7},
        {"action": "new_object", "label": 3, "name": "gone"},
        {"action": "delete", "label": 3},
        {"action": "undo"},
        {"action": "redo"},  # the delete again
        {"action": "commit", "label": 1},  # last commit order: 7, then 1
    )  # fmt: skip
    state = final_objects(validate_session_log(log))
    assert sorted(state.objects) == [1, 7] and state.commit_order == [7, 1]
    a, b = state.objects[1], state.objects[7]
    assert a.prompts == {2: box, 3: {"points": [[2, 2]], "point_labels": [1]}}
    assert a.candidates == {} and a.propagated and a.committed
    assert b.model_prompts[4]["points"] == [[3, 3]] and b.prompts[4] == box and not b.propagated


def _blob_engine(tiny_model, seed: int):
    """A ``(5, 40, 48)`` noisy volume with a bright box (and, for seeds > 0, a second one) and
    an ``Engine`` of the tiny model on it."""
    from napari_sam_med.plugin._engine import Engine

    img = np.random.default_rng(seed).normal(0, 5, (5, 40, 48)).astype(np.float32)
    img[1:4, 10:25, 12:30] += 60
    if seed:
        img[1:3, 28:36, 34:44] += 40
    return img, Engine(tiny_model, img, "minmax", None, {"name": "tiny"})


def _box_object_in_3d(s, engine) -> dict:
    """Object 1 of session ``s``: a box on slice 2, propagated in 3D and committed."""
    box = {"box": [12.0, 10.0, 29.0, 24.0]}
    s.new_object("box")
    s.set_prompt(1, 2, box, engine.preview(2, box))
    job = s.segment3d_job(engine)
    list(job.steps)
    s.finish_job(job)
    s.commit()
    return box


@pytest.fixture
def recorded(tmp_path: Path, tiny_model):
    """A plugin session on a small volume (tiny model): one box object propagated in 3D, one
    point object with a chosen candidate, both committed; saved as labels + log."""
    from napari_sam_med import save_checkpoint
    from napari_sam_med.plugin import _persist
    from napari_sam_med.plugin._session import Session
    from napari_sam_med.volume.geometry import Volume
    from napari_sam_med.volume.io import write_labels, write_volume

    img, engine = _blob_engine(tiny_model, 0)
    image = write_volume(Volume(img, (0.8, 0.8, 2.0)), tmp_path / "case.nii.gz")
    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    s = Session(img.shape, (0.8, 0.8, 2.0), {"path": str(image), "shape_zyx": list(img.shape)})
    s.model_info, s.preset = dict(engine.model_info), engine.preset
    _box_object_in_3d(s, engine)
    s.new_object("point")
    prompt = {"points": [[20.0, 15.0]], "point_labels": [1]}
    s.set_prompt(2, 1, prompt, engine.preview(1, prompt))
    s.cycle_candidate(1)
    s.commit()
    write_labels(s.labels, Volume(img, (0.8, 0.8, 2.0)), tmp_path / "seg.nrrd")
    log = _persist.save_log(s, tmp_path / "seg.session.json")
    return {"session": s, "engine": engine, "log": log, "image": image, "ckpt": ckpt}


def test_replay_with_the_same_model_reproduces_the_masks(recorded) -> None:
    s, engine = recorded["session"], recorded["engine"]
    log = load_session_log(recorded["log"])
    assert log["version"] == 2 and log["objects"][0]["prompts"]["2"]["box"]
    state = final_objects(log)
    steps = replay_objects(state, engine.locked())
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert [p.label for p in seen if p.message == "prompted slice"] == [1, 2]
    assert any(p.message.startswith("3D") for p in seen)
    np.testing.assert_array_equal(result.labels, s.labels)
    rows = compare_labels(state, s.labels, result)
    assert [(r["label"], r["dice"]) for r in rows] == [(1, 1.0), (2, 1.0)]
    assert rows[0]["propagated"] and not rows[1]["propagated"]
    with pytest.raises(ValueError, match="belong to another image"):
        compare_labels(state, s.labels[:2], result)


def test_replay_command_writes_labels_and_dice_csv(recorded, tmp_path: Path, capsys) -> None:
    from napari_sam_med.volume.io import read_volume

    out = tmp_path / "out"
    argv = ["replay", str(recorded["log"]), "--checkpoint", str(recorded["ckpt"]),
            "--device", "cpu", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 committed objects replayed" in text and "Dice 1.000" in text
    labels = read_volume(out / "case_replay.nii.gz").array
    np.testing.assert_array_equal(labels, recorded["session"].labels)
    with open(out / "case_replay_dice.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["label"], float(r["dice"])) for r in rows] == [("1", 1.0), ("2", 1.0)]
    # another model: the same prompts give other masks, and the Dice says so
    argv[3] = "tiny"
    argv[2] = "--model"
    assert main([*argv, "--out", str(tmp_path / "other")]) == 0
    with open(tmp_path / "other" / "case_replay_dice.csv") as fh:
        dices = [float(r["dice"]) for r in csv.DictReader(fh)]
    assert len(dices) == 2 and all(0.0 <= d <= 1.0 for d in dices)


def test_replay_command_errors_are_clear(recorded, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.session.json"
    bad.write_text(json.dumps(_log({"action": "prompt", "label": 1, "z": 0, "prompt": []})))
    assert main(["replay", str(bad), "--model", "tiny"]) == 2
    assert "event 0 (prompt): 'prompt' must be an object" in capsys.readouterr().err
    log = json.loads(Path(recorded["log"]).read_text())
    log["image"]["shape_zyx"] = [9, 9, 9]
    moved = tmp_path / "moved.session.json"
    moved.write_text(json.dumps(log))
    assert main(["replay", str(moved), "--model", "tiny", "--out", str(tmp_path / "x")]) == 2
    assert "recorded on an image of shape [9, 9, 9]" in capsys.readouterr().err


def test_plugin_undo_redo_and_replay_give_identical_objects_from_one_log(tiny_model) -> None:
    """One log, three readers: the live session's undo/redo, the plugin's replay and
    ``sam-med replay``'s reducer end with the same objects and the same labels."""
    from napari_sam_med.plugin import _persist
    from napari_sam_med.plugin._session import Session

    img, engine = _blob_engine(tiny_model, 3)
    s = Session(img.shape)
    s.model_info, s.preset = dict(engine.model_info), engine.preset
    box = _box_object_in_3d(s, engine)
    s.new_object("point")
    pts = {"points": [[38.0, 31.0], [20.0, 15.0]], "point_labels": [1, 0]}
    s.set_prompt(2, 1, pts, engine.preview(1, s.model_prompt(2, 1, pts)))
    s.cycle_candidate(1)
    s.cycle_candidate(1)
    assert s.undo() == "candidate" and s.redo() == "candidate" and s.undo() == "candidate"
    s.commit()
    s.rename(2, "second")
    s.new_object("dropped")
    s.set_prompt(3, 3, box, engine.preview(3, box))
    s.commit()
    assert s.undo() == "commit" and s.undo() == "prompt"
    s.delete_object(3)
    log = validate_session_log(json.loads(json.dumps(_persist.session_log(s))))

    state = final_objects(log)
    again = _persist.replay(log, engine)
    steps = replay_objects(state, engine.locked())
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result = stop.value
            break

    def plugin_view(session):
        return {
            o.label: (o.name, list(o.color), o.committed, o.propagated, o.prompts)
            for o in session.objects
        }

    reduced = {
        r.label: (r.name, r.color, r.committed, r.propagated, r.prompts)
        for r in state.objects.values()
    }
    assert plugin_view(s) == plugin_view(again) == reduced
    assert sorted(reduced) == [1, 2] and reduced[2][0] == "second"
    assert state.objects[2].candidates == {1: 0}  # the undone second cycle is not kept
    np.testing.assert_array_equal(again.labels, s.labels)
    np.testing.assert_array_equal(result.labels, s.labels)
    assert set(np.unique(s.labels)) == {0, 1, 2}


def test_restore_takes_names_and_colours_from_the_reducer() -> None:
    """An autosave's objects get the name and colour the log's events leave them with, even
    when the log carries no object list (older logs)."""
    from napari_sam_med.plugin import _persist
    from napari_sam_med.plugin._session import Session

    labels = np.zeros((2, 6, 6), np.uint16)
    labels[0, 1:3, 1:3], labels[1, 3:5, 3:5] = 1, 4
    log = _log(
        {"action": "new_object", "label": 1, "name": "a", "color": [1, 0, 0, 1]},
        {"action": "rename", "label": 1, "name": "liver"},
        {"action": "new_object", "label": 4, "name": "b"},
        {"action": "color", "label": 4, "color": [0, 0, 1, 1]},
        {"action": "undo"},
    )
    s = Session(labels.shape)
    _persist.restore(s, {"labels": labels, "log": validate_session_log(log)})
    got = {o.label: (o.name, o.color, o.committed, o.source) for o in s.objects}
    assert got[1] == ("liver", (1.0, 0.0, 0.0, 1.0), True, "restored")
    assert got[4][0] == "b" and got[4][1] != (0.0, 0.0, 1.0, 1.0)  # the colour was undone
    np.testing.assert_array_equal(s.labels, labels)
