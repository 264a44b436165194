"""The "SAM-Med" dock widget: a thin shell that composes the panels.

Each concern is one panel (a controller and its view) given the shared
:class:`~._workspace.Workspace` (viewer, engine, session, layers, activity bar):

* ``model``: image, model and embeddings (:mod:`._panel_model`);
* ``prompts`` and ``volume``: 2D prompting and candidates, 3D jobs and QC
  (:mod:`._panel_prompt`, :mod:`._panel_volume`);
* ``objects``: the objects table and brush edits (:mod:`._panel_objects`);
* ``files``: undo/redo, save, replay, compare, autosave (:mod:`._panel_files`);
* ``data_engine``: proposals and the training-set export (:mod:`._panel_data_engine`).

The radiologist's view is short: the activity bar above tabs (Model, Segment, Files, Data
engine, Keys); each tab scrolls on its own so the dock fits a 1366x768 laptop screen.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QLabel, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from . import _ui
from ._activity import Activity, ActivityView
from ._panel_data_engine import DataEnginePanel, DataEngineView
from ._panel_files import FilesPanel, FilesView, RestoreBox
from ._panel_model import PRESETS, ModelPanel, ModelView
from ._panel_objects import ObjectsPanel, ObjectsView
from ._panel_prompt import PromptPanel, PromptView
from ._panel_volume import VolumePanel, VolumeView
from ._workspace import Workspace

__all__ = ["PRESETS", "SamMedWidget"]
TABS = ("Model", "Segment", "Files", "Data engine", "Keys")


def _scrolled(*widgets: QWidget) -> QScrollArea:
    """The widgets stacked in a page that scrolls when the dock is short."""
    page = QWidget()
    lay = QVBoxLayout(page)
    for w in widgets:
        lay.addWidget(w)
    lay.addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(page)
    return area


class SamMedWidget(QWidget):
    """Segment tumours with points and boxes on 2D slices and whole 3D volumes."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.activity = Activity(ActivityView())
        self.ws = ws = Workspace(napari_viewer, self.activity)
        self.restore_box = RestoreBox()
        self.model = ModelPanel(ws, ModelView())
        self.volume = VolumePanel(ws, VolumeView())
        self.prompts = PromptPanel(ws, PromptView(), self.volume)
        self.objects = ObjectsPanel(ws, ObjectsView())
        self.files = FilesPanel(ws, FilesView(), self.restore_box)
        self.data_engine = DataEnginePanel(ws, DataEngineView())
        self.help_label = QLabel(_ui.help_text())
        self.help_label.setWordWrap(True)
        self.tabs = QTabWidget()
        pages = (
            (self.model.view,),
            (self.prompts.view, self.volume.view, self.objects.view),
            (self.files.view,),
            (self.data_engine.view,),
            (self.help_label,),
        )
        for name, widgets in zip(TABS, pages, strict=True):
            self.tabs.addTab(_scrolled(*widgets), name)
        root = QVBoxLayout(self)
        root.addWidget(self.activity.view)
        root.addWidget(self.restore_box)
        root.addWidget(self.tabs, 1)
        ws.on_bound(lambda: self.tabs.setCurrentIndex(TABS.index("Segment")))
        self.model.connect_viewer(True)
        for key, fn in self._key_actions().items():
            napari_viewer.bind_key(key, fn, overwrite=True)
        self.model.refresh_images()

    def _key_actions(self) -> dict[str, Any]:
        """Viewer key bindings (listed in ``_ui.SHORTCUTS``, the widget help and the docs)."""
        p, v, o, f, d = self.prompts, self.volume, self.objects, self.files, self.data_engine
        return {
            "W": lambda _v: p.cycle_candidate(1),
            "Shift+W": lambda _v: p.cycle_candidate(-1),
            "G": lambda _v: v.segment3d(),
            "J": lambda _v: v.next_flagged(1),
            "Shift+J": lambda _v: v.next_flagged(-1),
            "N": lambda _v: o.new_object(),
            "K": lambda _v: o.commit(),
            "Ctrl+Z": lambda _v: f.undo(),
            "Ctrl+Shift+Z": lambda _v: f.redo(),
            "Escape": lambda _v: self.activity.cancel(),
            "Q": lambda _v: d.propose(),
            "U": lambda _v: d.accept_proposal(),
            "H": lambda _v: d.reject_proposal(),
            "Shift+Q": lambda _v: d.skip_proposal(),
        }

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop reacting to the viewer, cancel running jobs and release the key bindings."""
        if self.ws.closed:
            return
        self.ws.closed = True
        self.model.connect_viewer(False)
        self.activity.cancel()
        for key in self._key_actions():
            self.viewer.bind_key(key, None, overwrite=True)

    def busy(self) -> bool:
        """Whether a worker is running or a prompt waits for one."""
        return self.activity.busy()

    # ---------------------------------------------- what tests and scripts read
    @property
    def session(self) -> Any:
        """The annotation session of the image the model is bound to (None before)."""
        return self.ws.session

    @property
    def engine(self) -> Any:
        """The model bound to the image (None before Load model)."""
        return self.ws.engine

    @property
    def image_layer(self) -> Any:
        return self.ws.image_layer

    @property
    def points_layer(self) -> Any:
        return self.ws.layers.points if self.ws.layers else None

    @property
    def shapes_layer(self) -> Any:
        return self.ws.layers.shapes if self.ws.layers else None

    @property
    def preview_layer(self) -> Any:
        return self.ws.layers.preview if self.ws.layers else None

    @property
    def labels_layer(self) -> Any:
        return self.ws.layers.labels if self.ws.layers else None

    def current_z(self) -> int:
        """The image slice shown in the viewer."""
        return self.ws.current_z()

    def go_to(self, z: int) -> None:
        """Show slice ``z``."""
        self.ws.go_to(z)
