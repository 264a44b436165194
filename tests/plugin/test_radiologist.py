"""What a radiologist hit, driven as a user does: real mouse clicks on the canvas, a laptop-size
screen, the CT window, the preview outline, status texts and the objects table."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QScrollArea,
    QTableWidget,
)

from tests.conftest import SAMPLE_DATA
from tests.plugin.conftest import add_box, wait_idle

pytestmark = pytest.mark.gui

Z = 22
LAPTOP_DOCK_HEIGHT = 700  # 1366x768 minus napari's title, menu and status bars


def _click_canvas(viewer, qtbot, widget, xy, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    """A mouse click on the canvas at image pixel ``xy`` of the slice in view."""
    qt_viewer = viewer.window._qt_viewer
    canvas = qt_viewer.canvas.native
    world = widget.image_layer.data_to_world([widget.current_z(), xy[1], xy[0]])
    viewer.camera.center = tuple(world[-2:])  # the pixel sits at the canvas centre
    qtbot.wait(50)
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, modifier, centre)


def test_shift_click_adds_a_negative_point_and_a_click_a_positive_one(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom", show=True)
    w.go_to(Z)
    wait_idle(qtbot, w)
    viewer.layers.selection.active = w.points_layer
    _click_canvas(viewer, qtbot, w, (35, 54))
    qtbot.waitUntil(lambda: len(w.points_layer.data) == 1, timeout=10_000)
    wait_idle(qtbot, w)
    _click_canvas(viewer, qtbot, w, (30, 50), Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: len(w.points_layer.data) == 2, timeout=10_000)
    wait_idle(qtbot, w)
    assert w.points_layer.features["label"].tolist() == [1, 0]
    assert w.session.obj().prompts[Z]["point_labels"] == [1, 0]


def test_click_sign_callback_reads_napari_key_objects(make_napari_viewer):
    """napari hands vispy key objects to drag callbacks; their str() is "<Key 'Shift'>"."""
    from vispy.util import keys

    from napari_sam_med.plugin import _layers

    viewer = make_napari_viewer()
    layer = viewer.add_points(ndim=3, features={"label": np.zeros(0, np.int64)})

    class Press:
        type, button = "mouse_press", 1

        def __init__(self, modifiers):
            self.modifiers = modifiers

    assert str(keys.SHIFT) == "<Key 'Shift'>"
    _layers.click_sign_callback(layer, Press((keys.SHIFT,)))
    assert int(layer.feature_defaults["label"][0]) == 0
    _layers.click_sign_callback(layer, Press((keys.CONTROL,)))
    assert int(layer.feature_defaults["label"][0]) == 1


def _controls(widget):
    kinds = (QAbstractButton, QLineEdit, QComboBox, QAbstractSpinBox, QTableWidget)
    found = [c for kind in kinds for c in widget.findChildren(kind)]
    # not the parts of another control (a table's corner button, a spin box's line edit)
    return [c for c in found if not any(o is not c and o.isAncestorOf(c) for o in found)]


def test_dock_fits_a_laptop_screen_with_every_control_reachable(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom", show=True)
    assert w.sizeHint().height() <= LAPTOP_DOCK_HEIGHT, w.sizeHint()
    assert w.minimumSizeHint().height() <= LAPTOP_DOCK_HEIGHT, w.minimumSizeHint()
    w.restore_box.setVisible(True)  # the restore offer shows above the tabs at times
    assert w.minimumSizeHint().height() <= LAPTOP_DOCK_HEIGHT
    w.restore_box.setVisible(False)
    viewer.window._qt_window.resize(1366, 768)
    qtbot.wait(50)
    tabs = w.tabs
    checked = 0
    for control in _controls(w):
        if control.parent() is None or control.isHidden() or control.window() is not w.window():
            continue
        if w.activity.view.isAncestorOf(control) or tabs.tabBar().isAncestorOf(control):
            continue
        if not control.isVisibleTo(w) and not _in_some_tab(tabs, control):
            continue
        index = next(i for i in range(tabs.count()) if tabs.widget(i).isAncestorOf(control))
        tabs.setCurrentIndex(index)
        area = tabs.widget(index)
        assert isinstance(area, QScrollArea)
        area.ensureWidgetVisible(control)
        qtbot.wait(1)
        assert not control.visibleRegion().isEmpty(), (control, tabs.tabText(index))
        checked += 1
    assert checked >= 40  # all the panels' buttons, fields, lists and tables


def _in_some_tab(tabs, control) -> bool:
    return any(tabs.widget(i).isAncestorOf(control) for i in range(tabs.count()))


def test_ct_opens_in_the_model_window(open_sam, qtbot):
    from napari_sam_med.plugin._reader import read_layers

    viewer, w = open_sam("ct_phantom")
    assert tuple(w.image_layer.contrast_limits) == pytest.approx((-160.0, 240.0))  # W400/L40
    _, kwargs, kind = read_layers(str(SAMPLE_DATA / "ct_phantom.nii.gz"))[0]
    assert kind == "image" and kwargs["contrast_limits"] == pytest.approx((-160.0, 240.0))
    _, kwargs, _ = read_layers(str(SAMPLE_DATA / "mr_phantom.nii.gz"))[0]
    assert "contrast_limits" not in kwargs  # MR keeps napari's own limits
    # a CT added over its full range is put in the window when the model is bound
    data = viewer.layers["ct_phantom"].data
    layer = viewer.add_image(np.array(data), name="plain ct")
    assert tuple(layer.contrast_limits) == tuple(layer.contrast_limits_range)
    w.model.view.image_combo.setCurrentText("plain ct")
    w.model.view.load_btn.click()
    qtbot.waitUntil(lambda: w.image_layer is layer, timeout=60_000)
    wait_idle(qtbot, w)
    assert tuple(layer.contrast_limits) == pytest.approx((-160.0, 240.0))


def test_preview_is_an_outline_in_a_colour_apart_from_the_box(open_sam, qtbot):
    from napari.utils.colormaps.standardize_color import transform_color

    viewer, w = open_sam("ct_phantom")
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    assert w.preview_layer.contour > 0, "the outline is the default"
    box = transform_color(w.shapes_layer.edge_color[0])[0][:3]
    mask = w.preview_layer.colormap.map(np.array([1]))[0][:3]
    assert np.abs(box - mask).sum() > 0.8, (box, mask)
    w.volume.view.outline_check.setChecked(False)
    assert w.preview_layer.contour == 0
    w.volume.view.outline_check.setChecked(True)
    assert w.preview_layer.contour > 0


def test_status_texts_are_never_stale(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    status = w.activity.view.status
    assert "Embedding" not in status.text(), status.text()
    assert "none left" not in w.data_engine.view.proposal_label.text()
    assert "Propose objects" in w.data_engine.view.proposal_label.text()
    w.go_to(5)  # a slice not embedded yet: embedded in the background
    qtbot.waitUntil(lambda: w.engine.is_embedded(5), timeout=60_000)
    wait_idle(qtbot, w)
    assert "Embedding slice 5" not in status.text(), status.text()


def test_objects_table_fits_and_shows_the_colour_before_commit(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom", show=True)
    w.tabs.setCurrentIndex(1)
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    table = w.objects.view.objects_table
    assert table.rowCount() == 1 and not w.session.obj(1).committed
    colour = table.item(0, 2)
    assert colour.text().startswith("#") and not colour.icon().isNull()
    qtbot.wait(50)
    assert table.horizontalScrollBar().maximum() == 0, "no horizontal scrolling for one row"
    assert table.verticalScrollBar().maximum() == 0


def test_scrolling_during_segment3d_does_not_embed_beside_the_job(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    add_box(w, Z, 24, 45, 47, 64)
    wait_idle(qtbot, w)
    far = 2 if not w.engine.is_embedded(2) else 37
    assert w.volume.segment3d() is not None
    w.go_to(far)  # the user scrolls while the job runs
    assert w.activity.running("job") and not w.activity.running("embed")
    wait_idle(qtbot, w)
    assert w.session.obj().propagated
    assert w.engine.is_embedded(far), "the slice in view is embedded once the job ended"
