"""``volume.prompt.SlicePrompt``: the one prompt type (validation, JSON forms, clipping)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import numpy as np
import pytest

from napari_sam_med.errors import PromptError
from napari_sam_med.volume.prompt import SlicePrompt, coerce


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"box": [1, 2]}, "'box' must be [x0, y0, x1, y1] (4 finite numbers), got [1, 2]"),
        ({"box": [0, 0, float("nan"), 3]}, "'box' must be [x0, y0, x1, y1]"),
        ({"box": "0 0 3 3"}, "'box' must be [x0, y0, x1, y1] (4 finite numbers), got '0 0 3 3'"),
        ({"points": [[1, 2, 3]], "point_labels": [1]}, "'points' must be a list of [x, y]"),
        ({"points": [[1, True]], "point_labels": [1]}, "'points' must be a list of [x, y]"),
        ({"points": [[1, 2]], "point_labels": [1, 0]}, "'point_labels' must be one 0 or 1 per "
                                                       "point, got [1, 0]"),
        ({"points": [[1, 2]]}, "'point_labels' must be one 0 or 1 per point, got ()"),
        ({"points": [[1, 2]], "point_labels": [2]}, "'point_labels' must be one 0 or 1 per point"),
        ({"points": [[1, 2]], "point_labels": [True]}, "'point_labels' must be one 0 or 1"),
        ({"text": "  "}, "'text' must be a non-empty string, got '  '"),
        ({"text": 3}, "'text' must be a non-empty string, got 3"),
        ({"box3d": [0, 0, 0, 1, 1]}, "'box3d' must be [x0, y0, z0, x1, y1, z1]"),
        ({"edited_box": [0, 0, 1]}, "'edited_box' must be [x0, y0, x1, y1]"),
    ],
)  # fmt: skip
def test_bad_fields_name_the_value_and_what_was_expected(data, message) -> None:
    with pytest.raises(PromptError, match=re.escape(message)) as err:
        SlicePrompt.from_json(data, "log event 3")
    assert str(err.value).startswith("log event 3: ")
    assert isinstance(err.value, ValueError)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(PromptError, match=r"slice 2 must be an object like .*got \[1, 2\]"):
        SlicePrompt.from_json([1, 2], "slice 2")


def test_every_old_json_form_round_trips() -> None:
    forms = [
        {"box": [1, 2, 30, 40]},  # manifest/CLI key slice, plugin box
        {"points": [[3, 4], [5.5, 6]], "point_labels": [1, 0]},  # plugin clicks
        {"text": "tumour"},  # text search seed
        {"box": [1.0, 2.0, 30.0, 40.0], "text": "liver lesion"},
        {"box": [1, 2, 9, 9], "box3d": [1, 2, 3, 9, 9, 7], "text": "t"},  # a 3D box's key slice
        {"box": [1, 2, 9, 9], "points": [[20, 3]], "point_labels": [1],
         "edited_box": [1, 2, 21.5, 9]},  # clicks turned into a box edit (box-only models)
        {},
    ]  # fmt: skip
    for form in forms:
        p = SlicePrompt.from_json(form)
        out = p.to_json()
        assert out == form  # numbers compare equal (ints are read as floats)
        assert json.loads(json.dumps(out)) == out
        assert SlicePrompt.from_json(json.loads(json.dumps(out))) == p
    p = SlicePrompt.from_json({"box3d": [1, 2, 3, 9, 9, 7]})
    assert p.to_json()["box3d"] == [1.0, 2.0, 3, 9.0, 9.0, 7]
    assert [type(v) for v in p.to_json()["box3d"]][2] is int  # z are slice indices


def test_unknown_keys_and_null_fields_are_read_as_absent() -> None:
    p = SlicePrompt.from_json({"box": None, "points": None, "text": None, "future": 1})
    assert p.is_empty and p.to_json() == {}
    assert SlicePrompt.from_json({"box": []}).box is None  # the plugin's empty box list


def test_numpy_inputs_and_plain_python_values() -> None:
    p = SlicePrompt.from_arrays(
        np.array([[1, 2, 3, 4]], np.float32),
        np.array([[5, 6]], np.float32),
        np.array([1]),
        " tumour ",
    )
    assert p.box == (1.0, 2.0, 3.0, 4.0) and p.points == ((5.0, 6.0),)
    assert p.point_labels == (1,) and p.text == "tumour"
    assert all(type(v) is float for v in p.box) and type(p.point_labels[0]) is int
    box, pts, lab = p.arrays()
    assert box.dtype == np.float32 and pts.shape == (1, 2) and lab.dtype == np.int64
    assert SlicePrompt(text="t").arrays() == (None, None, None)


def test_frozen_and_changes_are_checked_copies() -> None:
    p = SlicePrompt(box=(0, 0, 5, 5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.box = (1, 1, 2, 2)  # type: ignore[misc]
    q = p.add_points([[1, 1]], [0]).replace(text="x")
    assert p.to_json() == {"box": [0, 0, 5, 5]}
    assert q.to_json() == {"box": [0, 0, 5, 5], "points": [[1, 1]], "point_labels": [0],
                           "text": "x"}  # fmt: skip
    with pytest.raises(PromptError, match="'box'"):
        p.replace(box=(1, 2))
    assert copy.deepcopy(q) == q and hash(copy.deepcopy(q)) == hash(q)


def test_reads_as_its_json_mapping() -> None:
    p = SlicePrompt.from_json({"box": [0, 0, 5, 5], "text": "t"})
    assert p == {"box": [0, 0, 5, 5], "text": "t"} and p != {"box": [0, 0, 5, 5]}
    assert "box" in p and "points" not in p and p.get("points") is None
    assert p["box"] == [0, 0, 5, 5] and dict(p) == p.to_json() and len(p) == 2
    assert {**p, "text": "u"} == {"box": [0, 0, 5, 5], "text": "u"}
    assert not SlicePrompt() and bool(p)
    assert coerce(None) == SlicePrompt() and coerce(p) is p


def test_kind_says_what_leads() -> None:
    assert SlicePrompt(box=(0, 0, 1, 1), points=((0, 0),), point_labels=(1,)).kind == "box"
    assert SlicePrompt(points=((0, 0),), point_labels=(1,)).kind == "points"
    assert SlicePrompt(text="t").kind == "text"


def test_clipping_orders_the_box_and_moves_clicks_onto_the_slice() -> None:
    p = SlicePrompt(
        box=(50.0, -3.0, -2.0, 20.0), points=((-0.4, 5.0), (47.6, 41.0)), point_labels=(1, 0)
    )
    c = p.clipped((40, 48))  # (H, W)
    assert c.box == (0.0, 0.0, 47.0, 20.0)
    assert c.points == ((0.0, 5.0), (47.0, 39.0)) and c.point_labels == (1, 0)
    inside = SlicePrompt(box=(1, 2, 3, 4), text="t")
    assert inside.clipped((40, 48)) == inside


def test_prompts_and_session_logs_are_read_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import napari_sam_med.volume.prompt, napari_sam_med.volume.log_state,"
        " napari_sam_med.volume.session_log; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
