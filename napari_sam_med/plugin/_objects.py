"""Objects, undo/redo, saving, replay and autosave for the SAM-Med widget (a mixin)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qtpy.QtGui import QColor
from qtpy.QtWidgets import QColorDialog, QFileDialog, QTableWidgetItem

from . import _layers, _persist, _workers

logger = logging.getLogger(__name__)

LABEL_EVENTS = {
    "commit",
    "delete",
    "relabel",
    "undo",
    "redo",
    "restore",
    "paint",
    "accept proposal",
    "import labels",
}


class ObjectsMixin:
    """Methods of :class:`~._widget.SamMedWidget` about objects and files."""

    def _connect_objects(self) -> None:
        self.new_btn.clicked.connect(lambda: self.new_object())
        self.commit_btn.clicked.connect(lambda: self.commit())
        self.delete_btn.clicked.connect(lambda: self.delete_object())
        self.relabel_btn.clicked.connect(lambda: self.relabel(self.relabel_spin.value()))
        self.rename_btn.clicked.connect(lambda: self.rename(self.name_edit.text()))
        self.color_btn.clicked.connect(self._pick_color)
        self.objects_table.itemSelectionChanged.connect(self._on_table_select)
        self.undo_btn.clicked.connect(lambda: self.undo())
        self.redo_btn.clicked.connect(lambda: self.redo())
        self.browse_btn.clicked.connect(self._browse_labels)
        self.save_btn.clicked.connect(lambda: self.save())
        self.replay_btn.clicked.connect(lambda: self.replay())
        self.restore_btn.clicked.connect(lambda: self.restore_autosave())
        self.discard_btn.clicked.connect(lambda: self.restore_box.setVisible(False))
        self.import_btn.clicked.connect(lambda: self.import_labels_layer())

    def _guard(self, what: str, fn: Any, *args: Any) -> Any:
        """Run a session change; a ValueError/KeyError becomes a message, not a crash."""
        if not self._need_engine():
            return None
        try:
            out = fn(*args)
        except (ValueError, KeyError) as exc:
            self.notify(f"{what}: {exc.args[0] if exc.args else exc}", error=True)
            return None
        self._after_change(event=what)
        return out

    # ------------------------------------------------------------- objects
    def new_object(self, name: str | None = None) -> Any:
        """Start a new object (next free label); it becomes current."""
        return self._guard("new object", self.session.new_object, name)

    def commit(self, label: int | None = None) -> int | None:
        """Write the current object into the labels layer (other objects untouched)."""
        return self._guard("commit", self.session.commit, label)

    def delete_object(self, label: int | None = None) -> None:
        """Delete an object (the current one by default) and its committed voxels."""
        if self.session is not None and label is None:
            label = self.session.current
        self._guard("delete", self.session.delete_object, label)

    def relabel(self, new_label: int, label: int | None = None) -> None:
        """Give an object (the current one by default) another label value."""
        if self.session is not None and label is None:
            label = self.session.current
        self._guard("relabel", self.session.relabel, label, new_label)

    def rename(self, name: str, label: int | None = None) -> None:
        """Rename an object (the current one by default)."""
        if self.session is not None and label is None:
            label = self.session.current
        self._guard("rename", self.session.rename, label, name)

    def _pick_color(self) -> None:
        if self.session is None or self.session.current is None:
            return
        col = QColorDialog.getColor(QColor.fromRgbF(*self.session.obj().color), self)
        if col.isValid():
            self._guard("colour", self.session.set_color, self.session.current, col.getRgbF())

    def import_labels_layer(self, layer: Any = None) -> list[int] | None:
        """Take a Labels layer (the selected one by default, e.g. an opened DICOM SEG) into
        the session as committed objects to refine; names and colours come along."""
        from ._dicom import OBJECTS_KEY, import_labels

        layer = layer or self.viewer.layers.selection.active
        if layer is None or layer is self.labels_layer or not hasattr(layer, "selected_label"):
            self.notify("Select the Labels layer to refine first.", error=True)
            return None
        objects = layer.metadata.get(OBJECTS_KEY)
        return self._guard("import labels", import_labels, self.session, layer.data, objects)

    def select_object(self, label: int) -> None:
        """Make ``label`` current and show its prompts and mask."""
        self.session.select(label)
        self._after_change()

    def _on_table_select(self) -> None:
        rows = self.objects_table.selectionModel().selectedRows()
        if self._syncing or not rows or self.session is None:
            return
        label = int(self.objects_table.item(rows[0].row(), 0).text())
        if label != self.session.current:
            self.select_object(label)

    def undo(self) -> str | None:
        """Undo the last prompt, candidate choice, 3D job, commit or object change."""
        return self._guard("undo", self.session.undo)

    def redo(self) -> str | None:
        """Redo the last undone change."""
        return self._guard("redo", self.session.redo)

    # ------------------------------------------------------------- display
    def _after_change(self, event: str | None = None, slices: list[int] | None = None) -> None:
        """Bring layers, the objects table and the buttons in line with the session."""
        s = self.session
        if s is None:
            return
        if slices is not None:
            self._show_slices(slices)
        else:
            self._show_object()
            self._layers_from_session()
        if slices is None or event in LABEL_EVENTS:
            self._refresh_labels()
        self._fill_table()
        flagged = s.obj().seg.flagged_slices() if s.current is not None else []
        self.flagged_list.clear()
        self.flagged_list.addItems([str(z) for z in flagged])
        self.undo_btn.setEnabled(s.can_undo)
        self.redo_btn.setEnabled(s.can_redo)
        if s.current is not None and self.labels_layer.selected_label != s.current:
            self.labels_layer.selected_label = s.current  # the brush paints the current object
        if event in LABEL_EVENTS:
            self._autosave()

    def _refresh_labels(self) -> None:
        from ._dicom import OBJECTS_KEY, layer_objects

        self.labels_layer.metadata[OBJECTS_KEY] = layer_objects(self.session)  # names for SEG
        colors = {o.label: o.color for o in self.session.objects}
        if colors != getattr(self, "_label_colors", None):  # a new colormap is costly
            self.labels_layer.colormap = _layers.label_colormap(colors)
            self._label_colors = colors
        self.labels_layer.refresh()

    def _layers_from_session(self) -> None:
        prompts = self.session.obj().prompts if self.session.current is not None else {}
        self._syncing = True
        try:
            _layers.prompts_to_layers(prompts, self.points_layer, self.shapes_layer)
        finally:
            self._syncing = False
        self._pending.clear()

    def _fill_table(self) -> None:
        s, table = self.session, self.objects_table
        self._syncing = True
        try:
            table.setRowCount(len(s.objects))
            for row, o in enumerate(s.objects):
                info = s.summary(o.label)
                ml = info.get("volume_ml")
                span = info["slices"]
                state = "committed" if o.committed else ("3D" if o.propagated else "2D")
                cells = [
                    str(o.label),
                    o.name,
                    "",
                    f"{ml:.2f}" if ml is not None else "-",
                    f"{span[0]}-{span[1]}" if span else "-",
                    state,
                ]
                for col, text in enumerate(cells):
                    table.setItem(row, col, QTableWidgetItem(text))
                table.item(row, 2).setBackground(QColor.fromRgbF(*o.color))
                if o.label == s.current:
                    table.selectRow(row)
        finally:
            self._syncing = False

    # --------------------------------------------------------------- files
    def _browse_labels(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save labels", self.labels_path.text(), "Labels (*.nii.gz *.nrrd *.mha *.nii)"
        )
        if path:
            self.labels_path.setText(path)

    def save(self, path: str | None = None) -> tuple[Path, Path] | None:
        """Save the committed labels (with the image geometry) and the session log next to
        them (``<name>.session.json``); returns both paths."""
        from ..volume.io import write_labels

        if not self._need_engine():
            return None
        path = path or self.labels_path.text().strip()
        if not path:
            self.notify("Enter a labels file name (.nii.gz, .nrrd or .mha) first.", error=True)
            return None
        self.labels_path.setText(str(path))
        try:
            ref = _layers.reference_volume(
                self.session.shape,
                self.image_layer.metadata,
                self.image_layer.scale,
                self.image_layer.translate,
            )
            out = write_labels(self.session.labels, ref, path)
            log = _persist.save_log(self.session, _log_path_for(out))
        except (ValueError, OSError) as exc:
            self.notify(f"Saving failed: {exc}. Check the folder and the file suffix.", True)
            return None
        self.notify(f"Saved {out.name} and {log.name}")
        return out, log

    def replay(self, path: str | None = None) -> Any:
        """Replay a session log on this image with the loaded model (in a worker)."""
        if not self._need_engine():
            return None
        path = path or self.log_path.text().strip()
        try:
            log = _persist.load_log(path)
        except ValueError as exc:
            self.notify(str(exc), error=True)
            return None
        self._set_busy("Replaying the session log...", 0, len(log["events"]))
        self._job_worker = self._start(
            "Replaying the session log",
            _workers.replay_log,
            log,
            self.engine,
            on_yield=lambda p: self.progress.setValue(p[0]),
            on_done=self._replay_done,
            on_fail=self._failed,
            on_finished=self._replay_finished,
        )
        return self._job_worker

    def _replay_done(self, session: Any) -> None:
        session.image_info = self.session.image_info
        session.spacing_xyz = self.session.spacing_xyz
        self.session = session
        self.labels_layer.data = self._view(session.labels)
        self.notify(f"Replayed the log: {len(session.objects)} objects")

    def _replay_finished(self) -> None:
        self._job_worker = None
        self._set_idle()
        self._after_change(event="restore")

    # ------------------------------------------------------------ autosave
    def _autosave(self) -> None:
        cache = getattr(self.engine, "cache_dir", None)
        if cache is None:
            return
        log = _persist.session_log(self.session)
        labels = self.session.labels.copy()
        self._autosaves += 1

        def finished() -> None:
            self._autosaves -= 1

        self._start(
            "Autosave",
            _persist.autosave,
            cache,
            self.session.image_info["volume_hash"],
            labels,
            log,
            on_fail=self._failed,
            on_finished=finished,
        )

    def _check_autosave(self) -> None:
        cache = getattr(self.engine, "cache_dir", None)
        saved = (
            _persist.find_autosave(cache, self.session.image_info["volume_hash"]) if cache else None
        )
        self._saved = saved
        if saved is None:
            self.restore_box.setVisible(False)
            return
        n = len(saved["log"].get("objects", []))
        self.restore_label.setText(
            f"This image has autosaved labels ({n} objects, saved {saved['saved']}). Restore them?"
        )
        self.restore_box.setVisible(True)

    def restore_autosave(self) -> None:
        """Load the autosaved committed labels of this image as committed objects."""
        saved = getattr(self, "_saved", None)
        if saved is None or not self._need_engine():
            return
        self.restore_box.setVisible(False)
        empty = [o.label for o in self.session.objects if not o.seg.slices and not o.committed]
        for label in empty:
            self.session.delete_object(label)
        self._guard("restore", _persist.restore, self.session, saved)


def _log_path_for(labels_path: Path) -> Path:
    name = labels_path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return labels_path.with_name(name + ".session.json")
