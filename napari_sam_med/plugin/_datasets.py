"""Training-set export, replay comparison, checkpoint picking and text prompts for the
SAM-Med widget (a mixin).

* "Export training set" writes the image and its committed labels (with the session log)
  into an MSD-style dataset through ``napari_sam_med.export`` (the code of
  ``sam-med export``), in a worker.
* "Compare with model" replays a saved session log with the model loaded now
  (``volume.log_replay.replay_objects``): the new masks appear in *SAM-Med replay* beside
  the logged ones, with the per-object Dice in the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QTableWidgetItem

from . import _layers, _persist, _workers


class DatasetsMixin:
    """Methods of :class:`~._widget.SamMedWidget` about datasets, replays and text."""

    replay_layer: Any = None

    def _connect_datasets(self) -> None:
        self.export_btn.clicked.connect(lambda: self.export_training_set())
        self.export_browse_btn.clicked.connect(self._browse_export)
        self.compare_btn.clicked.connect(lambda: self.compare_with_model())
        self.checkpoint_browse_btn.clicked.connect(self._browse_checkpoint)
        self.log_browse_btn.clicked.connect(self._browse_log)
        self.text_btn.clicked.connect(lambda: self.prompt_text())
        self.text_edit.returnPressed.connect(lambda: self.prompt_text())

    # ---------------------------------------------------------------- pickers
    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the training set into")
        if folder:
            self.export_path.setText(folder)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)"
        )
        if path:
            self.checkpoint_edit.setText(path)
            if not self.model_combo.currentText().startswith(("vit_", "medsam_vit")):
                self.model_combo.setCurrentText("checkpoint file")

    def _browse_log(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Session log", "", "Session logs (*.json)")
        if path:
            self.log_path.setText(path)

    # ---------------------------------------------------------------- export
    def export_training_set(self, folder: str | None = None) -> Any:
        """Add this image and its committed labels (and the session log) to the MSD-style
        dataset in ``folder`` (the folder field, else a folder dialog); runs in a worker."""
        from ..export import ExportItem, case_name, export_dataset

        if not self._need_engine():
            return None
        folder = folder or self.export_path.text().strip()
        if not folder:
            self._browse_export()
            folder = self.export_path.text().strip()
            if not folder:
                return None
        self.export_path.setText(str(folder))
        layer, s = self.image_layer, self.session
        if layer.rgb:
            self.notify("Export training set: RGB images are not supported (grey only).", True)
            return None
        if not s.labels.any():
            self.notify("Export training set: nothing committed yet; commit an object (K).", True)
            return None
        source = (layer.metadata.get(_layers.GEOMETRY_KEY) or {}).get("path") or layer.name
        try:
            image = _image_volume(layer, s.shape)
        except ValueError as exc:
            self.notify(f"Export training set: {exc}", error=True)
            return None
        item = ExportItem(
            str(source), f"labels of {layer.name} in the viewer", case_name(source),
            {o.label: o.name for o in s.objects if o.committed}, _persist.session_log(s),
            image, s.labels.copy(),
        )  # fmt: skip
        loose = [o.label for o in s.objects if not o.committed and o.seg.slices]
        self._set_busy(f"Exporting {item.case} to {folder}...", 0, 0)

        def done(meta: dict[str, Any]) -> None:
            note = f"; objects {loose} are not committed and were left out" if loose else ""
            self.notify(
                f"Exported case {item.case} to {folder} (dataset: {meta['numTraining']} "
                f"cases){note}"
            )

        def finished() -> None:
            self._export_worker = None
            self._set_idle()

        self._export_worker = self._start(
            "Exporting the training set",
            export_dataset,
            [item],
            folder,
            modality=layer.metadata.get("modality"),
            overwrite=self.export_overwrite_check.isChecked(),
            on_done=done,
            on_fail=self._failed,
            on_finished=finished,
        )
        return self._export_worker

    # ---------------------------------------------------------------- replay
    def compare_with_model(self, path: str | None = None) -> Any:
        """Replay a session log's objects with the loaded model and show the new masks beside
        the logged ones (labels saved next to the log, else the labels in the viewer)."""
        if not self._need_engine():
            return None
        path = path or self.log_path.text().strip()
        try:
            log = _persist.load_log(path)
            shape = (log.get("image") or {}).get("shape_zyx")
            if shape and tuple(shape) != tuple(self.session.shape):
                raise ValueError(
                    f"{path}: recorded on an image of shape {shape}, but this image has "
                    f"{list(self.session.shape)}"
                )
        except ValueError as exc:
            self.notify(str(exc), error=True)
            return None
        if self._job_worker is not None:
            self.notify("A job is already running; wait or cancel it.", error=True)
            return None
        self._set_busy("Replaying the logged prompts with this model...", 0, 0)

        def step(p: Any) -> None:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
            self.status.setText(f"Replay: object {p.label}, slice {p.z} ({p.message})")

        def finished() -> None:
            self._job_worker = None
            self._set_idle()

        self._job_worker = self._start(
            "Comparing the session log with this model",
            _workers.compare_log,
            log,
            path,
            self.engine,
            self.session.labels.copy(),
            on_yield=step,
            on_done=self._compare_done,
            on_fail=self._failed,
            on_finished=finished,
        )
        return self._job_worker

    def _compare_done(self, out: tuple[Any, list[dict[str, Any]], str]) -> None:
        import numpy as np

        result, rows, where = out
        layer = self.replay_layer
        if layer is None or layer not in self.viewer.layers:
            ref = self.labels_layer
            layer = self.viewer.add_labels(
                self._view(result.labels), name="SAM-Med replay", opacity=0.5,
                scale=ref.scale, translate=ref.translate,
            )  # fmt: skip
            self.replay_layer = layer
            self.viewer.layers.selection.active = self.points_layer
        else:
            layer.data = self._view(result.labels)
        self._replay_rows = rows
        self.compare_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            dice = "n/a" if row["dice"] is None else f"{row['dice']:.3f}"
            cells = [str(row["label"]), row["name"], dice,
                     f"{row['logged_voxels']} / {row['replayed_voxels']}"]  # fmt: skip
            for c, text in enumerate(cells):
                self.compare_table.setItem(r, c, QTableWidgetItem(text))
        dices = [row["dice"] for row in rows if row["dice"] is not None]
        mean = f"mean Dice {np.mean(dices):.3f}" if dices else "no Dice"
        self.notify(
            f"Replayed {len(rows)} objects with {self.engine.model_info['name']}: {mean} "
            f"against {where}. New masks in 'SAM-Med replay'."
        )

    # ------------------------------------------------------------------ text
    def _update_text_support(self) -> None:
        dim = getattr(self.engine.model.config, "text_dim", None)
        ok = dim is not None
        self.text_edit.setEnabled(ok)
        self.text_btn.setEnabled(ok)
        self.text_label.setText(
            f"Text prompts: this model takes {dim}-d text embeddings (encoder from its checkpoint)."
            if ok
            else "Text prompts: this model has no text-prompt support (text_dim=None). Use "
            "points or boxes, or load a checkpoint trained with text prompts."
        )

    def prompt_text(self, text: str | None = None) -> None:
        """Prompt the current object on the slice in view with text (with its points/box);
        an empty text removes the slice's text prompt."""
        if not self._need_engine():
            return
        if getattr(self.engine.model.config, "text_dim", None) is None:
            self.notify("This model has no text-prompt support; use points or boxes.", True)
            return
        text = (self.text_edit.text() if text is None else text).strip()
        z, obj = self.current_z(), self.session.obj()
        prompt = dict(obj.prompts.get(z, {}))
        if text:
            prompt["text"] = text
        else:
            prompt.pop("text", None)
        self._pending[z] = prompt
        self._run_pending()


def _image_volume(layer: Any, shape: tuple[int, int, int]) -> Any:
    """The image layer as a ``Volume`` on its geometry (a 2D image is one slice)."""
    import numpy as np

    from ..volume.geometry import Volume

    ref = _layers.reference_volume(shape, layer.metadata, layer.scale, layer.translate)
    data = np.asarray(layer.data)
    return Volume(data.reshape(shape), ref.spacing, ref.origin, ref.direction, Path(layer.name))
