"""The SAM-Med widget driven as a user would, with the fast random ``tiny`` model.

These check the plumbing (layers, workers, objects, undo, files); mask quality is checked
with the real model in ``test_widget_medsam.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_med.plugin import _layers, _ui
from tests.conftest import SAMPLE_DATA
from tests.plugin.conftest import add_box, add_point, press, wait_idle

pytestmark = pytest.mark.gui

Z = 22  # a slice through lesion 1 of the CT phantom (box3d [24, 45, 18, 47, 64, 26])


def test_sample_volume_loads_with_geometry_and_preset(open_sam, qtbot, sample_manifest):
    viewer, w = open_sam("ct_phantom")
    info = sample_manifest["volumes"]["ct_phantom"]
    image = viewer.layers["ct_phantom"]
    np.testing.assert_allclose(image.scale, info["spacing_xyz_mm"][::-1])
    np.testing.assert_allclose(image.translate, info["origin_lps_mm"][::-1])
    assert image.metadata[_layers.GEOMETRY_KEY]["spacing"] == pytest.approx(info["spacing_xyz_mm"])
    assert w.model.view.preset_combo.currentText() == "ct_soft_tissue"
    assert w.session.shape == image.data.shape
    for layer in (w.points_layer, w.shapes_layer, w.preview_layer, w.labels_layer):
        assert layer in viewer.layers
        np.testing.assert_allclose(layer.scale, image.scale)
    # the shortcuts are bound and shown in the widget's help
    bound = {str(k) for k in viewer.keymap}
    for key in _ui.BOUND_KEYS:
        assert key in bound, key
    for key, what in _ui.SHORTCUTS:
        assert f"{key}: {what}" in w.help_label.text()


def test_point_shows_mask_on_its_slice_and_box_changes_it(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    w.go_to(Z)
    assert w.current_z() == Z
    add_point(w, Z, 35, 54)
    wait_idle(qtbot, w)
    after_point = w.preview_layer.data[Z].copy()
    assert after_point.any(), "a positive point must give a mask on its slice"
    assert not np.delete(w.preview_layer.data, Z, axis=0).any(), "only that slice changes"
    assert w.session.obj().prompts[Z]["points"] == [[35.0, 54.0]]
    assert "IoU" in w.prompts.view.candidates_label.text()
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    assert w.session.obj().prompts[Z]["box"] == [24.0, 45.0, 47.0, 64.0]
    assert not np.array_equal(w.preview_layer.data[Z], after_point), "the box changes the mask"


def test_candidate_cycling_key_switches_mask(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    add_point(w, Z, 35, 54)
    wait_idle(qtbot, w)
    _, preview = w.session.last_preview
    assert len(preview.candidates) == 3  # a single point: the three ambiguity masks
    first = preview.index
    press(viewer, "W")
    assert preview.index == (first + 1) % 3
    np.testing.assert_array_equal(w.preview_layer.data[Z], preview.chosen.mask)
    press(viewer, "Shift+W")
    assert preview.index == first


def test_undo_redo_over_prompts_and_commits(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    add_point(w, Z, 35, 54)
    wait_idle(qtbot, w)
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    w.objects.view.commit_btn.click()
    committed = w.session.labels.copy()
    assert committed.any() and len(w.points_layer.data) == 1 and len(w.shapes_layer.data) == 1
    press(viewer, "Ctrl+Z")  # commit
    assert not w.session.labels.any() and not w.labels_layer.data.any()
    w.files.view.undo_btn.click()  # the box
    assert len(w.shapes_layer.data) == 0 and len(w.points_layer.data) == 1
    w.files.view.undo_btn.click()  # the point
    assert len(w.points_layer.data) == 0 and not w.preview_layer.data.any()
    for _ in range(3):
        press(viewer, "Ctrl+Shift+Z")
    wait_idle(qtbot, w)
    np.testing.assert_array_equal(w.session.labels, committed)
    np.testing.assert_array_equal(w.labels_layer.data, committed)
    assert len(w.points_layer.data) == 1 and len(w.shapes_layer.data) == 1


def test_two_objects_commit_without_overwriting(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    add_box(w, Z, 20, 40, 60, 80)
    wait_idle(qtbot, w)
    w.objects.view.commit_btn.click()
    first = w.session.labels == 1
    assert first.any()
    press(viewer, "N")
    assert w.session.current == 2 and len(w.points_layer.data) == 0
    add_box(w, Z, 30, 50, 90, 100)  # overlaps object 1
    wait_idle(qtbot, w)
    press(viewer, "K")
    np.testing.assert_array_equal(w.session.labels == 1, first)  # object 1 untouched
    mask2 = w.session.object_mask(2)
    assert (w.session.labels == 2).sum() == (mask2 & ~first).sum() > 0
    assert w.objects.view.objects_table.rowCount() == 2
    assert w.objects.view.objects_table.item(1, 0).text() == "2"
    assert float(w.objects.view.objects_table.item(1, 3).text()) > 0  # volume in mL
    w.objects.relabel(5)
    assert set(np.unique(w.session.labels)) == {0, 1, 5}
    w.objects.delete_object()
    assert set(np.unique(w.session.labels)) == {0, 1}
    w.objects.select_object(1)
    assert w.session.obj().prompts[Z]["box"] == [20.0, 40.0, 60.0, 80.0]
    assert len(w.shapes_layer.data) == 1


def test_save_and_reload_keeps_geometry(open_sam, qtbot, tmp_path):
    from napari_sam_med.volume.io import read_volume

    viewer, w = open_sam("ct_phantom")
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    w.objects.commit()
    w.files.view.labels_path.setText(str(tmp_path / "seg.nii.gz"))
    w.files.view.save_btn.click()
    source = read_volume(SAMPLE_DATA / "ct_phantom.nii.gz")
    saved = read_volume(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(saved.spacing, source.spacing, atol=1e-5)
    np.testing.assert_allclose(saved.origin, source.origin, atol=1e-4)
    np.testing.assert_allclose(saved.direction, source.direction, atol=1e-6)
    np.testing.assert_array_equal(saved.array, w.session.labels)
    assert (tmp_path / "seg.session.json").is_file()
    # reload through the plugin's reader; save through its writer, as NRRD
    viewer.open(str(tmp_path / "seg.nii.gz"), plugin="napari-sam-med", layer_type="labels")
    layer = viewer.layers["seg.nii.gz"]
    np.testing.assert_allclose(layer.scale, viewer.layers["ct_phantom"].scale)
    np.testing.assert_allclose(layer.translate, viewer.layers["ct_phantom"].translate)
    layer.save(str(tmp_path / "again.nrrd"), plugin="napari-sam-med")
    again = read_volume(tmp_path / "again.nrrd")
    np.testing.assert_allclose(again.origin, source.origin, atol=1e-4)
    np.testing.assert_array_equal(again.array, w.session.labels)


def test_worker_errors_notify_and_keep_the_widget_usable(open_sam, qtbot, tmp_path, monkeypatch):
    from napari.utils.notifications import notification_manager

    viewer, w = open_sam("ct_phantom")
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    before = w.session.obj().seg.slices[Z].mask.copy()
    engine = w.engine

    def boom(*_a, **_k):
        raise RuntimeError("simulated decoder crash")
        yield  # a generator, like the real preview_steps

    monkeypatch.setattr(engine, "preview_steps", boom)
    n0 = len(notification_manager.records)
    add_point(w, Z, 35, 54, positive=False)
    wait_idle(qtbot, w)
    texts = [str(r.message) for r in notification_manager.records[n0:]]
    assert any("2D prediction on slice 22 failed: simulated decoder crash" in t for t in texts)
    assert any("undo" in t.lower() for t in texts)  # an actionable hint
    np.testing.assert_array_equal(w.session.obj().seg.slices[Z].mask, before)  # state intact
    assert len(w.points_layer.data) == 0  # the failed click is taken back
    monkeypatch.undo()
    # a broken checkpoint file: the model fails to load, the old model stays in use
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    w.model.view.model_combo.setCurrentText("checkpoint file")
    w.model.view.checkpoint_edit.setText(str(bad))
    w.model.view.load_btn.click()
    qtbot.waitUntil(lambda: w.model.view.load_btn.isEnabled(), timeout=60_000)
    assert "checkpoint" in str(notification_manager.records[-1].message).lower()
    assert w.engine is engine
    add_point(w, Z, 30, 50)  # still works
    wait_idle(qtbot, w)
    assert w.session.obj().prompts[Z]["points"] == [[30.0, 50.0]]


@pytest.mark.parametrize("rgb", [False, True])
def test_plain_2d_images(open_sam, qtbot, rgb):
    rng = np.random.default_rng(0)
    img = (rng.random((48, 64, 3) if rgb else (48, 64)) * 255).astype(np.uint8)
    img[10:30, 20:40] = 255
    viewer, w = open_sam(img, rgb=rgb)
    assert w.model.view.preset_combo.currentText() == "identity"
    assert w.points_layer.ndim == 2 and w.preview_layer.data.shape == (48, 64)
    add_point(w, 0, 30, 20)
    wait_idle(qtbot, w)
    assert w.session.obj().prompts[0]["points"] == [[30.0, 20.0]]
    assert w.preview_layer.data.any()
    w.objects.commit()
    assert w.labels_layer.data.shape == (48, 64) and w.labels_layer.data.any()


def test_replay_log_regenerates_masks_with_another_checkpoint(open_sam, qtbot, tmp_path):
    import torch

    from napari_sam_med import build_sam, save_checkpoint
    from napari_sam_med.plugin import _persist

    viewer, w = open_sam("ct_phantom")
    add_point(w, Z, 35, 54)
    wait_idle(qtbot, w)
    w.prompts.cycle_candidate()
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    w.objects.commit()
    w.files.view.labels_path.setText(str(tmp_path / "seg.nrrd"))
    _, log_path = w.files.save()
    labels = w.session.labels.copy()
    prompts = dict(w.session.obj(1).prompts)
    # same model: identical result
    w.files.view.log_path.setText(str(log_path))
    w.files.view.replay_btn.click()
    wait_idle(qtbot, w)
    np.testing.assert_array_equal(w.session.labels, labels)
    assert w.session.obj(1).prompts == prompts
    assert _persist.load_log(log_path)["events"][1]["prompt"]["points"] == [[35.0, 54.0]]
    # another checkpoint: same prompts, masks regenerated by that model
    torch.manual_seed(123)
    ckpt = save_checkpoint(build_sam("tiny", device="cpu"), tmp_path / "other.pt")
    w.model.view.model_combo.setCurrentText("checkpoint file")
    w.model.view.checkpoint_edit.setText(str(ckpt))
    w.model.view.load_btn.click()
    qtbot.waitUntil(lambda: w.engine.model_info["name"] == str(ckpt), timeout=60_000)
    wait_idle(qtbot, w)
    w.files.replay(str(log_path))
    wait_idle(qtbot, w)
    assert w.session.obj(1).committed and w.session.obj(1).prompts[Z]["box"]
    assert w.session.model_info["name"] == str(ckpt)


def test_autosave_and_restore_offer(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    assert not w.restore_box.isVisibleTo(w)
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    w.objects.commit()
    w.objects.rename("liver lesion")
    wait_idle(qtbot, w)
    labels = w.session.labels.copy()
    # "crash": reopen the same image in a fresh viewer and widget
    viewer2, w2 = open_sam("ct_phantom")
    assert w2.restore_box.isVisibleTo(w2)
    assert "1 objects" in w2.restore_box.restore_label.text()
    w2.restore_box.restore_btn.click()
    wait_idle(qtbot, w2)
    np.testing.assert_array_equal(w2.session.labels, labels)
    np.testing.assert_array_equal(w2.labels_layer.data, labels)
    assert [o.label for o in w2.session.objects] == [1]


def test_click_modifiers_choose_point_sign(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_points(ndim=3, features={"label": np.zeros(0, np.int64)})

    class Click:
        type = "mouse_press"

        def __init__(self, modifiers, button=1):
            self.modifiers, self.button = modifiers, button

    _layers.click_sign_callback(layer, Click(()))
    assert int(layer.feature_defaults["label"][0]) == 1
    _layers.click_sign_callback(layer, Click(("Shift",)))
    assert int(layer.feature_defaults["label"][0]) == 0
    _layers.click_sign_callback(layer, Click((), button=2))
    assert int(layer.feature_defaults["label"][0]) == 0


def test_precompute_shows_progress_can_be_cancelled_and_fills_the_disk_cache(
    open_sam, qtbot, tmp_path
):
    from napari_sam_med import build_sam, save_checkpoint

    viewer, w = open_sam("ct_phantom")
    ckpt = save_checkpoint(build_sam("tiny", device="cpu"), tmp_path / "tiny.pt")
    w.model.view.model_combo.setCurrentText("checkpoint file")
    w.model.view.checkpoint_edit.setText(str(ckpt))

    def reload() -> None:
        engine = w.engine
        w.model.view.load_btn.click()
        qtbot.waitUntil(lambda: w.engine is not engine, timeout=60_000)
        wait_idle(qtbot, w)

    reload()
    n = w.engine.num_slices
    seen = []

    def on_progress(value: int) -> None:
        seen.append(value)
        if value >= 3:
            w.activity.view.cancel_btn.click()

    w.activity.view.progress.valueChanged.connect(on_progress)
    w.model.view.precompute_btn.click()
    assert w.activity.view.cancel_btn.isEnabled()
    wait_idle(qtbot, w)
    w.activity.view.progress.valueChanged.disconnect(on_progress)
    done = [z for z in range(n) if w.engine.is_embedded(z)]
    assert 3 <= len(done) < n, len(done)  # cancelled part-way
    assert seen and max(seen) < n
    # the embeddings are on disk: the same model on the same image finds them again
    reload()
    assert all(w.engine.is_embedded(z) for z in done)
    assert w.engine.segmenter.encoder_calls <= 1  # at most the slice in view was computed
