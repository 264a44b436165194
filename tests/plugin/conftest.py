"""Fixtures for the GUI tests: a viewer with the SAM-Med widget and a model loaded."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import SAMPLE_DATA

WORKER_TIMEOUT_MS = 900_000  # generous: a loaded CI machine embeds slowly


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Embedding cache and autosaves go to the test's tmp folder."""
    monkeypatch.setenv("NAPARI_SAM_MED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_SAM_MED_SAMPLE_DATA", str(SAMPLE_DATA))


@pytest.fixture(scope="session")
def sample_manifest() -> dict:
    return json.loads((SAMPLE_DATA / "sample_data.json").read_text())


def wait_idle(qtbot, widget, timeout: int = WORKER_TIMEOUT_MS) -> None:
    """Wait until no worker of the widget is running and no prompt is pending."""

    def idle() -> None:
        assert not widget.busy()

    qtbot.waitUntil(idle, timeout=timeout)


def pytest_collection_modifyitems(config, items):
    """Without a display (Qt "offscreen"), napari's OpenGL canvas cannot be created."""
    if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        return
    skip = pytest.mark.skip(reason="napari's canvas needs OpenGL: run the GUI tests under xvfb")
    for item in items:
        if "open_sam" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture
def open_sam(make_napari_viewer, qtbot):
    """Factory: a viewer with one image and the widget with a model loaded on it.

    ``open_sam(layer_data, model="tiny", show=False, **image_kwargs)`` takes a sample key of
    this plugin or an array; ``show`` opens the window (needed for screenshots). Widgets are
    shut down (and their workers awaited) before viewers close.
    """
    widgets = []

    def factory(layer_data, model="tiny", show=False, **layer_kwargs):
        from napari_sam_med.plugin._widget import SamMedWidget

        viewer = make_napari_viewer(show=show)
        if isinstance(layer_data, str):
            viewer.open_sample("napari-sam-med", layer_data)
        else:
            viewer.add_image(layer_data, **layer_kwargs)
        widget = SamMedWidget(viewer)
        widgets.append(widget)
        viewer.window.add_dock_widget(widget, name="SAM-Med")
        widget.model.view.model_combo.setCurrentText(model)
        widget.model.view.device_combo.setCurrentText("cpu")
        import torch

        torch.manual_seed(0)  # the random `tiny` model is the same in every run
        widget.model.view.load_btn.click()
        qtbot.waitUntil(lambda: widget.session is not None, timeout=WORKER_TIMEOUT_MS)
        wait_idle(qtbot, widget)
        return viewer, widget

    yield factory
    for widget in widgets:
        widget.shutdown()
        qtbot.waitUntil(
            lambda w=widget: not w.activity.running(),
            timeout=WORKER_TIMEOUT_MS,
        )


def add_point(widget, z, x, y, positive=True):
    """Add a prompt point as a click in the Points layer does (napari data order)."""
    from napari_sam_med.plugin import _layers

    _layers.set_point_label(widget.points_layer, positive)
    coord = [z, y, x] if widget.points_layer.ndim == 3 else [y, x]
    widget.points_layer.add(np.array(coord, float))


def add_box(widget, z, x0, y0, x1, y1):
    """Draw a rectangle in the Shapes layer (napari data order corners)."""
    corners = [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]
    if widget.shapes_layer.ndim == 3:
        corners = [[z, *c] for c in corners]
    widget.shapes_layer.add_rectangles(np.array(corners, float))


def press(viewer, key: str) -> None:
    """Run the viewer's binding of ``key`` (e.g. ``"Ctrl+Z"``), as pressing it does."""
    from napari.utils.key_bindings import coerce_keybinding

    viewer.keymap[coerce_keybinding(key)](viewer)
