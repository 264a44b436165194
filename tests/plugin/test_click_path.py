"""The click path of the plugin: a click on an embedded slice shows its mask at once (decoded
in the GUI thread before napari repaints), a busy engine sends it to the worker instead (the
GUI never waits on a 3D job), and a failing decode is reported without changing anything."""

from __future__ import annotations

import threading

import pytest

from tests.plugin.conftest import wait_idle
from tests.plugin.test_radiologist import Z, _click_canvas

pytestmark = pytest.mark.gui


def _ready(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom", show=True)
    w.go_to(Z)
    wait_idle(qtbot, w)
    w.engine.embed(Z)
    viewer.layers.selection.active = w.points_layer
    return viewer, w


def test_click_on_an_embedded_slice_shows_its_mask_before_the_event_loop_runs(open_sam, qtbot):
    viewer, w = _ready(open_sam, qtbot)
    _click_canvas(viewer, qtbot, w, (35, 54))
    # no qtbot.wait: the mouse click's own events already produced the preview
    assert w.session.last_preview is not None
    label, preview = w.session.last_preview
    assert preview.z == Z and len(preview.candidates) == 3  # one point: one multimask decode
    assert w.session.obj().prompts[Z]["point_labels"] == [1]
    assert ((w.preview_layer.data[Z] > 0) == preview.chosen.mask).all()
    assert f"Slice {Z} candidates" in w.prompts.view.candidates_label.text()
    wait_idle(qtbot, w)
    assert w.session.last_preview[1].chosen is preview.chosen


def test_click_while_a_job_holds_the_engine_waits_in_the_worker_not_the_gui(open_sam, qtbot):
    viewer, w = _ready(open_sam, qtbot)
    held, release = threading.Event(), threading.Event()

    def job() -> None:  # stands for a 3D propagation decoding under the engine's lock
        with w.engine.lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=job)
    thread.start()
    assert held.wait(10)
    try:
        _click_canvas(viewer, qtbot, w, (35, 54))
        assert w.session.last_preview is None  # the GUI thread did not wait for the lock
        assert w.ws.activity.running("preview")
    finally:
        release.set()
        thread.join()
    wait_idle(qtbot, w)
    assert w.session.last_preview is not None and w.session.last_preview[1].z == Z


def test_a_failing_click_decode_is_reported_and_changes_nothing(open_sam, qtbot, monkeypatch):
    viewer, w = _ready(open_sam, qtbot)
    messages = []
    monkeypatch.setattr(w.ws, "notify", lambda text, error=False: messages.append((text, error)))

    def broken(z, prompt):
        raise RuntimeError("decoder exploded")
        yield  # a generator, as the real one

    monkeypatch.setattr(w.engine, "preview_steps", broken)
    _click_canvas(viewer, qtbot, w, (35, 54))
    wait_idle(qtbot, w)
    assert messages and messages[-1][1] is True
    assert "2D prediction on slice 22 failed: decoder exploded" in messages[-1][0]
    assert w.session.last_preview is None and Z not in w.session.obj().prompts
    assert len(w.points_layer.data) == 0  # the layer shows what the session holds
