"""The data-engine side of the SAM-Med widget, driven as a user would (tiny model): brush
edits, proposals, training-set export, replay comparison, malformed logs, text prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.plugin.conftest import add_box, press, wait_idle

pytestmark = pytest.mark.gui

Z = 22  # a slice through lesion 1 of the CT phantom


def _messages(since: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(r.message) for r in notification_manager.records[since:]]


def _n_messages() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def _commit_box(w, qtbot):
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    w.objects.commit()
    wait_idle(qtbot, w)


def test_brush_strokes_are_logged_with_time_and_undone_with_ctrl_z(open_sam, qtbot, tmp_path):
    viewer, w = open_sam("ct_phantom")
    _commit_box(w, qtbot)
    assert w.labels_layer.selected_label == 1  # the brush paints the current object
    before = w.session.labels.copy()
    # paint where the slice is empty (the tiny model is random, so its mask lands anywhere)
    from scipy import ndimage

    free = ndimage.binary_erosion(before[Z] == 0, iterations=4)
    ys, xs = np.nonzero(free)
    py, px = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    layer = w.labels_layer
    layer.brush_size = 3
    layer.paint((Z, py, px), 1)  # napari's brush API: one stroke on slice Z
    wait_idle(qtbot, w)
    added = int((w.session.labels == 1).sum() - (before == 1).sum())
    assert added > 0
    event = w.session.events[-1]
    assert event["action"] == "paint" and event["objects"][0]["added"] == added
    assert w.session.obj(1).edits == {Z: {"added": added, "removed": 0}}
    assert w.session.object_mask(1)[Z, py, px], "the object follows the edit"
    w.objects.commit()  # the edit survives a re-commit
    assert w.session.labels[Z, py, px] == 1
    w.files.view.labels_path.setText(str(tmp_path / "seg.nii.gz"))
    _, log_path = w.files.save()
    entry = json.loads(log_path.read_text())["objects"][0]
    assert entry["edits"] == {str(Z): {"added": added, "removed": 0}}
    assert entry["time"]["interactions"] >= 3 and entry["time"]["seconds"] >= 0
    press(viewer, "Ctrl+Z")  # the re-commit (changes nothing)
    from napari.utils.key_bindings import coerce_keybinding

    # the labels layer's own Ctrl+Z (active while painting) uses the session history too
    viewer.layers.selection.active = layer
    layer.keymap[coerce_keybinding("Ctrl+Z")](layer)
    np.testing.assert_array_equal(w.session.labels, before)
    assert not w.session.obj(1).edits


def _fake_records(z_mask_pairs):
    """AMG records like the generator returns (the tiny random model proposes noise)."""
    out = []
    for mask, iou, stab in z_mask_pairs:
        out.append({"segmentation": mask, "area": int(mask.sum()), "predicted_iou": iou,
                    "stability_score": stab, "point_coords": [[10.0, 10.0]]})  # fmt: skip
    return out


def test_proposals_are_reviewed_one_by_one(open_sam, qtbot, monkeypatch):
    from napari_sam_med.plugin import _proposals

    viewer, w = open_sam("ct_phantom")
    h, wd = w.session.shape[1:]
    a, b, big = (np.zeros((h, wd), bool) for _ in range(3))
    a[45:64, 24:47] = True  # lesion 1
    b[10:20, 10:20] = True
    big[:, :] = True  # the whole slice: filtered out
    records = _fake_records([(b, 0.85, 0.86), (a, 0.95, 0.97), (big, 0.99, 0.99)])

    def amg(engine, z, settings):
        yield 1, 1, "automatic masks"
        return records

    monkeypatch.setattr(_proposals, "_amg_records", amg)
    w.go_to(Z)
    press(viewer, "Q")
    wait_idle(qtbot, w)
    layer = w.data_engine.layer
    assert layer in viewer.layers and w.data_engine.view.accept_btn.isEnabled()
    assert "Proposal 1 of 2 (slice 22): predicted IoU 0.95, stability 0.97" in (
        w.data_engine.view.proposal_label.text()
    )
    assert (layer.data[Z] == 1).sum() == a.sum() and (layer.data[Z] == 2).sum() == b.sum()
    press(viewer, "U")  # accept lesion 1
    assert w.session.obj(1).committed is False  # the first, empty object stays
    accepted = w.session.obj(2)
    assert accepted.source == "proposal" and accepted.committed
    assert (w.session.labels[Z] == 2).sum() == a.sum()
    assert w.objects.view.objects_table.rowCount() == 2
    assert (
        "Proposal 1 of 1" in w.data_engine.view.proposal_label.text()
        and (layer.data[Z] == 1).sum() == b.sum()
    )
    press(viewer, "H")  # reject the other one
    assert not layer.data.any() and not w.data_engine.view.accept_btn.isEnabled()
    assert "accepted 1, rejected 1" in w.data_engine.view.proposal_label.text()
    rejected = w.session.events[-1]
    assert rejected["action"] == "reject_proposal" and rejected["area"] == b.sum()
    n0 = _n_messages()
    press(viewer, "U")  # nothing left: a message, no crash
    assert any("No proposal to review" in t for t in _messages(n0))


def test_export_training_set_from_the_widget(open_sam, qtbot, tmp_path):
    from napari_sam_med.volume.io import read_volume

    viewer, w = open_sam("ct_phantom")
    _commit_box(w, qtbot)
    w.objects.rename("liver lesion")
    out = tmp_path / "dataset"
    w.data_engine.export_training_set(str(out))
    wait_idle(qtbot, w)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and meta["labels"]["1"] == "liver lesion"
    entry = meta["training"][0]
    assert entry["image"] == "./imagesTr/ct_phantom.nii.gz"
    labels = read_volume(out / "labelsTr" / "ct_phantom.nii.gz")
    np.testing.assert_array_equal(labels.array, w.session.labels)
    image = read_volume(out / "imagesTr" / "ct_phantom.nii.gz")
    np.testing.assert_array_equal(image.array, viewer.layers["ct_phantom"].data)
    np.testing.assert_allclose(image.spacing, viewer.layers["ct_phantom"].scale[::-1], rtol=1e-5)
    log = json.loads((out / "logs" / "ct_phantom.session.json").read_text())
    assert [e["action"] for e in log["events"]][:2] == ["new_object", "prompt"]
    assert not list(out.rglob(".tmp-*"))
    n0 = _n_messages()
    w.data_engine.export_training_set(str(out))  # the same case again: a clear error
    wait_idle(qtbot, w)
    assert any("already exported" in t for t in _messages(n0))
    w.data_engine.view.export_overwrite_check.setChecked(True)
    w.data_engine.export_training_set(str(out))
    wait_idle(qtbot, w)
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1


def test_compare_replay_shows_new_masks_and_dice(open_sam, qtbot, tmp_path):
    viewer, w = open_sam("ct_phantom")
    _commit_box(w, qtbot)
    w.files.view.labels_path.setText(str(tmp_path / "seg.nii.gz"))
    _, log_path = w.files.save()
    w.files.view.log_path.setText(str(log_path))
    w.files.view.compare_btn.click()
    wait_idle(qtbot, w)
    layer = viewer.layers["SAM-Med replay"]
    np.testing.assert_array_equal(layer.data, w.session.labels)  # same model, same masks
    assert w.files.view.compare_table.rowCount() == 1
    assert w.files.view.compare_table.item(0, 2).text() == "1.000"
    assert w.session.labels.any(), "comparing leaves the session untouched"


def test_malformed_session_logs_give_a_message_not_a_crash(open_sam, qtbot, tmp_path):
    viewer, w = open_sam("ct_phantom")
    cases = {
        "garbage.json": "{not json",
        "foreign.json": json.dumps({"hello": 1}),
        "bad_event.json": json.dumps({"format": "napari-sam-med-session", "events": [
            {"action": "prompt", "label": 1, "z": 2, "prompt": {"box": [1, 2, "x", 4]}}]}),
        "other_image.json": json.dumps({"format": "napari-sam-med-session", "events": [],
                                        "image": {"shape_zyx": [1, 2, 3]}}),
    }  # fmt: skip
    expected = [
        "cannot read the session log",
        "not a napari-sam-med session log",
        "event 0 (prompt): 'prompt': 'box' must be [x0, y0, x1, y1]",
        "recorded on an image of shape",
    ]
    for (name, text), message in zip(cases.items(), expected, strict=True):
        path = tmp_path / name
        path.write_text(text)
        n0 = _n_messages()
        w.files.compare_with_model(str(path))
        if name != "other_image.json":
            w.files.replay(str(path))
        wait_idle(qtbot, w)
        assert any(message in t for t in _messages(n0)), (name, _messages(n0))
    _commit_box(w, qtbot)  # still usable
    assert w.session.labels.any()


def test_text_field_is_disabled_for_models_without_text(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    assert not w.prompts.view.text_edit.isEnabled() and not w.prompts.view.text_btn.isEnabled()
    assert "no text-prompt support" in w.prompts.view.text_label.text()
    n0 = _n_messages()
    w.prompts.prompt_text("tumour")
    assert any("no text-prompt support" in t for t in _messages(n0))
    assert not w.session.obj().prompts


def test_text_prompt_with_a_text_checkpoint(open_sam, qtbot, tmp_path):
    from napari_sam_med.plugin import _persist
    from tests.text_fakes import register_fake, text_checkpoint

    fake = register_fake()
    ckpt = text_checkpoint(tmp_path / "text.pt")
    viewer, w = open_sam("ct_phantom")
    w.model.view.model_combo.setCurrentText("checkpoint file")
    w.model.view.checkpoint_edit.setText(str(ckpt))
    engine = w.engine
    w.model.view.load_btn.click()
    qtbot.waitUntil(lambda: w.engine is not engine, timeout=60_000)
    wait_idle(qtbot, w)
    assert (
        w.prompts.view.text_edit.isEnabled()
        and "12-d text embeddings" in w.prompts.view.text_label.text()
    )
    w.go_to(Z)
    w.prompts.view.text_edit.setText("liver lesion")
    w.prompts.view.text_btn.click()
    wait_idle(qtbot, w)
    assert w.session.obj().prompts[Z] == {"text": "liver lesion"}
    assert ["liver lesion"] in fake.calls
    add_box(w, Z, 24, 45, 47, 64)  # text and a box together; the text stays
    wait_idle(qtbot, w)
    assert w.session.obj().prompts[Z] == {"box": [24.0, 45.0, 47.0, 64.0], "text": "liver lesion"}
    w.objects.commit()
    path = _persist.save_log(w.session, tmp_path / "text.session.json")
    prompts = [e for e in _persist.load_log(path)["events"] if e["action"] == "prompt"]
    assert prompts[-1]["prompt"]["text"] == "liver lesion"
