"""The "Files" panel: undo/redo, saving labels with the session log, replaying a log,
comparing a log with the loaded model, and the autosave (with its restore offer).

"Compare with model" replays a saved session log's objects with the model loaded now
(``volume.log_replay.replay_objects``): the new masks appear in *SAM-Med replay* beside the
logged ones, with the per-object Dice in the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGroupBox,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import _layers, _persist, _workers
from ._display import REPLAY
from ._ui import path_field, row
from ._workspace import LABEL_EVENTS, Workspace


class RestoreBox(QGroupBox):
    """The offer to restore autosaved labels (shown on the main view when there are some)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Autosaved labels found", parent)
        self.restore_label = QLabel("")
        self.restore_label.setWordWrap(True)
        self.restore_btn = QPushButton("Restore")
        self.discard_btn = QPushButton("Discard")
        lay = QVBoxLayout(self)
        lay.addWidget(self.restore_label)
        lay.addWidget(row(self.restore_btn, self.discard_btn))
        self.setVisible(False)


class FilesView(QWidget):
    """Undo/redo, labels file and Save, session log with Replay and Compare."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.undo_btn = QPushButton("Undo (Ctrl+Z)")
        self.redo_btn = QPushButton("Redo (Ctrl+Shift+Z)")
        self.labels_path, self.browse_btn = path_field("labels file (.nii.gz, .nrrd, .mha)")
        self.save_btn = QPushButton("Save labels + session log")
        self.log_path, self.log_browse_btn = path_field("session log (.json) to replay")
        self.replay_btn = QPushButton("Replay log")
        self.compare_btn = QPushButton("Compare with model")
        t = self.compare_table = QTableWidget(0, 4)
        t.setHorizontalHeaderLabels(["label", "name", "Dice logged/new", "voxels"])
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.setMaximumHeight(110)
        lay = QVBoxLayout(self)
        lay.addWidget(row(self.undo_btn, self.redo_btn))
        lay.addWidget(row(self.labels_path, self.browse_btn))
        lay.addWidget(self.save_btn)
        lay.addWidget(row(self.log_path, self.log_browse_btn))
        lay.addWidget(row(self.replay_btn, self.compare_btn))
        lay.addWidget(t)
        lay.addStretch(1)


class FilesPanel:
    """History, files, replays and the autosave of the workspace's session."""

    def __init__(self, ws: Workspace, view: FilesView, restore: RestoreBox) -> None:
        self.ws, self.view, self.restore_box = ws, view, restore
        self._saved: dict[str, Any] | None = None
        v = view
        v.undo_btn.clicked.connect(lambda: self.undo())
        v.redo_btn.clicked.connect(lambda: self.redo())
        v.browse_btn.clicked.connect(self._browse_labels)
        v.log_browse_btn.clicked.connect(self._browse_log)
        v.save_btn.clicked.connect(lambda: self.save())
        v.replay_btn.clicked.connect(lambda: self.replay())
        v.compare_btn.clicked.connect(lambda: self.compare_with_model())
        restore.restore_btn.clicked.connect(lambda: self.restore_autosave())
        restore.discard_btn.clicked.connect(lambda: restore.setVisible(False))
        ws.on_bound(self._check_autosave)
        ws.on_change(self._show)

    def undo(self) -> str | None:
        """Undo the last prompt, candidate choice, 3D job, commit or object change."""
        return self.ws.guard("undo", self.ws.session.undo)

    def redo(self) -> str | None:
        """Redo the last undone change."""
        return self.ws.guard("redo", self.ws.session.redo)

    def _show(self, event: str | None, slices: list[int] | None) -> None:
        s = self.ws.session
        self.view.undo_btn.setEnabled(s.can_undo)
        self.view.redo_btn.setEnabled(s.can_redo)
        if event in LABEL_EVENTS:
            self._autosave()

    def _browse_labels(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self.view, "Save labels", self.view.labels_path.text(),
            "Labels (*.nii.gz *.nrrd *.mha *.nii)",
        )  # fmt: skip
        if path:
            self.view.labels_path.setText(path)

    def _browse_log(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.view, "Session log", "", "Session logs (*.json)")
        if path:
            self.view.log_path.setText(path)

    def save(self, path: str | None = None) -> tuple[Path, Path] | None:
        """Save the committed labels (with the image geometry) and the session log next to
        them (``<name>.session.json``); returns both paths."""
        from ..volume.io import write_labels

        ws = self.ws
        if not ws.need_engine():
            return None
        path = path or self.view.labels_path.text().strip()
        if not path:
            ws.notify("Enter a labels file name (.nii.gz, .nrrd or .mha) first.", error=True)
            return None
        self.view.labels_path.setText(str(path))
        img = ws.image_layer
        try:
            ref = _layers.reference_volume(ws.session.shape, img.metadata, img.scale, img.translate)
            # an explicit Save to the file named in the widget: replacing it is the intent
            out = write_labels(ws.session.labels, ref, path, overwrite=True)
            log = _persist.save_log(ws.session, _log_path_for(out))
        except (ValueError, OSError) as exc:
            ws.notify(f"Saving failed: {exc}. Check the folder and the file suffix.", True)
            return None
        ws.notify(f"Saved {out.name} and {log.name}")
        return out, log

    def _load_log(self, path: str | None) -> tuple[str, dict[str, Any]] | None:
        path = path or self.view.log_path.text().strip()
        try:
            return path, _persist.load_log(path)
        except ValueError as exc:
            self.ws.notify(str(exc), error=True)
            return None

    def replay(self, path: str | None = None) -> Any:
        """Replay a session log on this image with the loaded model (in a worker)."""
        ws = self.ws
        loaded = self._load_log(path) if ws.need_engine() else None
        if loaded is None:
            return None
        log = loaded[1]
        ws.activity.set_busy("Replaying the session log...", 0, len(log["events"]))
        return ws.activity.run(
            "job", "Replaying the session log", _workers.replay_log, log, ws.engine,
            on_yield=lambda p: ws.activity.view.progress.setValue(p[0]),
            on_done=self._replay_done, on_fail=ws.failed,
            on_finished=lambda: ws.changed(event="restore"),
        )  # fmt: skip

    def _replay_done(self, session: Any) -> None:
        ws = self.ws
        session.image_info = ws.session.image_info
        session.spacing_xyz = ws.session.spacing_xyz
        ws.session = session
        ws.layers.rebind(session)
        ws.notify(f"Replayed the log: {len(session.objects)} objects")

    def compare_with_model(self, path: str | None = None) -> Any:
        """Replay a session log's objects with the loaded model and show the new masks beside
        the logged ones (labels saved next to the log, else the labels in the viewer)."""
        ws = self.ws
        loaded = self._load_log(path) if ws.need_engine() else None
        if loaded is None:
            return None
        path, log = loaded
        shape = (log.get("image") or {}).get("shape_zyx")
        if shape and tuple(shape) != tuple(ws.session.shape):
            ws.notify(f"{path}: recorded on an image of shape {shape}, but this image has "
                      f"{list(ws.session.shape)}", error=True)  # fmt: skip
            return None
        if ws.activity.running("job"):
            ws.notify("A job is already running; wait or cancel it.", error=True)
            return None
        ws.activity.set_busy("Replaying the logged prompts with this model...", 0, 0)

        def step(p: Any) -> None:
            ws.activity.set_progress(p.done, p.total)
            ws.activity.say(f"Replay: object {p.label}, slice {p.z} ({p.message})")

        return ws.activity.run(
            "job", "Comparing the session log with this model", _workers.compare_log, log, path,
            ws.engine, ws.session.labels.copy(),
            on_yield=step, on_done=self._compare_done, on_fail=ws.failed,
        )  # fmt: skip

    def _compare_done(self, out: tuple[Any, list[dict[str, Any]], str]) -> None:
        result, rows, where = out
        ws, table = self.ws, self.view.compare_table
        ws.layers.extra_layer(REPLAY, result.labels, 0.5)
        table.setRowCount(len(rows))
        for r, item in enumerate(rows):
            dice = "n/a" if item["dice"] is None else f"{item['dice']:.3f}"
            cells = [str(item["label"]), item["name"], dice,
                     f"{item['logged_voxels']} / {item['replayed_voxels']}"]  # fmt: skip
            for c, text in enumerate(cells):
                table.setItem(r, c, QTableWidgetItem(text))
        dices = [item["dice"] for item in rows if item["dice"] is not None]
        mean = f"mean Dice {np.mean(dices):.3f}" if dices else "no Dice"
        ws.notify(
            f"Replayed {len(rows)} objects with {ws.engine.model_info['name']}: {mean} "
            f"against {where}. New masks in 'SAM-Med replay'."
        )

    # ------------------------------------------------------------ autosave
    def _autosave(self) -> None:
        ws = self.ws
        cache = getattr(ws.engine, "cache_dir", None)
        if cache is None:
            return
        log = _persist.session_log(ws.session)
        labels = ws.session.labels.copy()
        ws.activity.autosaves += 1

        def finished() -> None:
            ws.activity.autosaves -= 1

        ws.activity.start(
            "Autosave", _persist.autosave, cache, ws.session.image_info["volume_hash"],
            labels, log, on_fail=ws.failed, on_finished=finished,
        )  # fmt: skip

    def _check_autosave(self) -> None:
        ws = self.ws
        cache = getattr(ws.engine, "cache_dir", None)
        volume = ws.session.image_info["volume_hash"]
        self._saved = saved = _persist.find_autosave(cache, volume) if cache else None
        if saved is None:
            self.restore_box.setVisible(False)
            return
        n = len(saved["log"].get("objects", []))
        self.restore_box.restore_label.setText(
            f"This image has autosaved labels ({n} objects, saved {saved['saved']}). Restore them?"
        )
        self.restore_box.setVisible(True)

    def restore_autosave(self) -> None:
        """Load the autosaved committed labels of this image as committed objects."""
        ws = self.ws
        if self._saved is None or not ws.need_engine():
            return
        self.restore_box.setVisible(False)
        empty = [o.label for o in ws.session.objects if not o.seg.slices and not o.committed]
        for label in empty:
            ws.session.delete_object(label)
        ws.guard("restore", _persist.restore, ws.session, self._saved)


def _log_path_for(labels_path: Path) -> Path:
    name = labels_path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return labels_path.with_name(name + ".session.json")
