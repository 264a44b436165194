"""The "Objects" panel: the objects table, new/commit/delete/relabel/rename/colour, taking a
Labels layer in, and brush edits on *SAM-Med labels*.

Painting or erasing on *SAM-Med labels* with napari's brush is recorded in the session
(which slices, how many voxels, time spent) and is undoable with the widget's undo.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import _layers
from ._annotate import record_paint
from ._ui import row
from ._workspace import LABEL_EVENTS, Workspace

COLUMNS = ["label", "name", "colour", "mL", "slices", "state"]


class ObjectsView(QWidget):
    """The objects table and the buttons acting on the current object."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        t = self.objects_table = QTableWidget(0, len(COLUMNS))
        t.setHorizontalHeaderLabels(COLUMNS)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.verticalHeader().setVisible(False)
        header = t.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # the name takes the rest
        t.setMinimumHeight(90)
        t.setMaximumHeight(140)
        self.new_btn = QPushButton("New (N)")
        self.commit_btn = QPushButton("Commit (K)")
        self.delete_btn = QPushButton("Delete")
        self.import_btn = QPushButton("Refine labels layer")
        self.import_btn.setToolTip(
            "Take the selected Labels layer (e.g. a DICOM SEG) in as objects"
        )
        self.relabel_spin = QSpinBox()
        self.relabel_spin.setRange(1, 65535)
        self.relabel_btn = QPushButton("Relabel")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name")
        self.rename_btn = QPushButton("Rename")
        self.color_btn = QPushButton("Colour...")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(t)
        lay.addWidget(row(self.new_btn, self.commit_btn, self.delete_btn))
        lay.addWidget(row(self.name_edit, self.rename_btn, self.color_btn))
        lay.addWidget(row(self.relabel_spin, self.relabel_btn, self.import_btn))


def swatch(color: Any) -> QIcon:
    """A small square icon of ``color`` (RGBA in 0..1): visible on a selected row too."""
    pix = QPixmap(12, 12)
    pix.fill(QColor.fromRgbF(*color))
    return QIcon(pix)


class ObjectsPanel:
    """Object commands on the workspace's session, and the table that lists the objects."""

    def __init__(self, ws: Workspace, view: ObjectsView) -> None:
        self.ws, self.view = ws, view
        self._painted: list[list[Any]] = []
        self._paint_timer = QTimer(view)
        self._paint_timer.setSingleShot(True)
        self._paint_timer.setInterval(0)
        self._paint_timer.timeout.connect(self._record_paint)
        v = view
        v.new_btn.clicked.connect(lambda: self.new_object())
        v.commit_btn.clicked.connect(lambda: self.commit())
        v.delete_btn.clicked.connect(lambda: self.delete_object())
        v.relabel_btn.clicked.connect(lambda: self.relabel(v.relabel_spin.value()))
        v.rename_btn.clicked.connect(lambda: self.rename(v.name_edit.text()))
        v.color_btn.clicked.connect(self._pick_color)
        v.import_btn.clicked.connect(lambda: self.import_labels_layer())
        v.objects_table.itemSelectionChanged.connect(self._on_table_select)
        ws.activity.wait_for(lambda: bool(self._painted))
        ws.on_bound(self._bound)
        ws.on_change(self._show)

    def _current(self, label: int | None) -> int | None:
        s = self.ws.session
        return s.current if s is not None and label is None else label

    def new_object(self, name: str | None = None) -> Any:
        """Start a new object (next free label); it becomes current."""
        return self.ws.guard("new object", self.ws.session.new_object, name)

    def commit(self, label: int | None = None) -> int | None:
        """Write the current object into the labels layer (other objects untouched)."""
        return self.ws.guard("commit", self.ws.session.commit, label)

    def delete_object(self, label: int | None = None) -> None:
        """Delete an object (the current one by default) and its committed voxels."""
        self.ws.guard("delete", self.ws.session.delete_object, self._current(label))

    def relabel(self, new_label: int, label: int | None = None) -> None:
        """Give an object (the current one by default) another label value."""
        self.ws.guard("relabel", self.ws.session.relabel, self._current(label), new_label)

    def rename(self, name: str, label: int | None = None) -> None:
        """Rename an object (the current one by default)."""
        self.ws.guard("rename", self.ws.session.rename, self._current(label), name)

    def _pick_color(self) -> None:
        s = self.ws.session
        if s is None or s.current is None:
            return
        col = QColorDialog.getColor(QColor.fromRgbF(*s.obj().color), self.view)
        if col.isValid():
            self.ws.guard("colour", s.set_color, s.current, col.getRgbF())

    def import_labels_layer(self, layer: Any = None) -> list[int] | None:
        """Take a Labels layer (the selected one by default, e.g. an opened DICOM SEG) into
        the session as committed objects to refine; names and colours come along."""
        from ._dicom import OBJECTS_KEY, import_labels

        ws = self.ws
        layer = layer or ws.viewer.layers.selection.active
        own = ws.layers.labels if ws.layers is not None else None
        if layer is None or layer is own or not hasattr(layer, "selected_label"):
            ws.notify("Select the Labels layer to refine first.", error=True)
            return None
        objects = layer.metadata.get(OBJECTS_KEY)
        return ws.guard("import labels", import_labels, ws.session, layer.data, objects)

    def select_object(self, label: int) -> None:
        """Make ``label`` current and show its prompts and mask."""
        self.ws.session.select(label)
        self.ws.changed()

    def _on_table_select(self) -> None:
        rows = self.view.objects_table.selectionModel().selectedRows()
        s = self.ws.session
        if self.ws.syncing or not rows or s is None:
            return
        label = int(self.view.objects_table.item(rows[0].row(), 0).text())
        if label != s.current:
            self.select_object(label)

    # -------------------------------------------------------------- display
    def _show(self, event: str | None, slices: list[int] | None) -> None:
        s, layers = self.ws.session, self.ws.layers
        if slices is None or event in LABEL_EVENTS:
            layers.show_labels()
        self._fill_table()
        if s.current is not None and layers.labels.selected_label != s.current:
            layers.labels.selected_label = s.current  # the brush paints the current object

    def _fill_table(self) -> None:
        s, table = self.ws.session, self.view.objects_table
        self.ws.syncing = True
        try:
            table.setRowCount(len(s.objects))
            for r, o in enumerate(s.objects):
                info = s.summary(o.label)
                ml, span = info.get("volume_ml"), info["slices"]
                state = "committed" if o.committed else ("3D" if o.propagated else "2D")
                hexa = QColor.fromRgbF(*o.color).name()
                cells = [str(o.label), o.name, hexa, f"{ml:.2f}" if ml is not None else "-",
                         f"{span[0]}-{span[1]}" if span else "-", state]  # fmt: skip
                for col, text in enumerate(cells):
                    table.setItem(r, col, QTableWidgetItem(text))
                table.item(r, 2).setIcon(swatch(o.color))
                if o.label == s.current:
                    table.selectRow(r)
        finally:
            self.ws.syncing = False

    # ---------------------------------------------------------- brush edits
    def _bound(self) -> None:
        """Record brush strokes on the labels layer; its Ctrl+Z / Ctrl+Shift+Z use the
        session's history (napari's own labels history would bypass the session)."""
        layer = self.ws.layers.labels
        layer.events.paint.connect(self._on_paint)
        layer.bind_key("Control-Z", lambda _ly: self.ws.guard("undo", self.ws.session.undo),
                       overwrite=True)  # fmt: skip
        layer.bind_key("Control-Shift-Z", lambda _ly: self.ws.guard("redo", self.ws.session.redo),
                       overwrite=True)  # fmt: skip

    def _on_paint(self, event: Any) -> None:
        """napari reports a stroke before writing its last voxels: read them a moment later."""
        if self.ws.session is None or self.ws.syncing:
            return
        self._painted.append(list(event.value))
        self._paint_timer.start()

    def _record_paint(self) -> None:
        strokes, self._painted = self._painted, []
        changed = False
        for atoms in strokes:
            try:
                index, before = _layers.paint_changes(atoms, self.ws.session.shape)
            except ValueError as exc:  # an edit napari describes in an unknown way
                self.ws.notify(f"Brush edit kept in the labels but not in the log: {exc}", True)
                continue
            changed |= record_paint(self.ws.session, index, before) is not None
        if changed:
            self.ws.changed(event="paint")
