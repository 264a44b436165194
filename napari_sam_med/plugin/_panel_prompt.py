"""The "Segment" panel's prompting half: prompt layers -> 2D previews, ambiguity candidates,
text prompts.

Points and boxes drawn on the prompt layers are diffed against the current object's prompts;
a changed slice is predicted one at a time (the newest prompt of a slice wins): the first mask
in the GUI thread when the slice is embedded and the engine is free (a decode is 20-40 ms), the
other ambiguity candidates and anything that needs an embedding in the ``preview`` worker
slot. A prediction on an object already propagated in 3D starts a correction job through the
:class:`~._panel_volume.VolumePanel`.
"""

from __future__ import annotations

import traceback
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from . import _layers, _workers
from ._panel_volume import VolumePanel
from ._ui import row
from ._workspace import Workspace


class PromptView(QWidget):
    """Candidates of the last 2D mask, and the text prompt."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.candidates_label = QLabel("Candidates: add a point or a box.")
        self.candidates_label.setWordWrap(True)
        self.cycle_btn = QPushButton("Next candidate (W)")
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("text prompt, e.g. tumour (models trained with text)")
        self.text_btn = QPushButton("Prompt by text")
        self.text_label = QLabel("Text prompts: load a model first.")
        self.text_label.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(row(self.candidates_label, self.cycle_btn))
        lay.addWidget(row(self.text_edit, self.text_btn))
        lay.addWidget(self.text_label)


class PromptPanel:
    """Turns the prompt layers into 2D previews of the current object."""

    def __init__(self, ws: Workspace, view: PromptView, volume: VolumePanel) -> None:
        self.ws, self.view, self.volume = ws, view, volume
        self.pending: dict[int, dict] = {}
        self.inflight: tuple[int, dict] | None = None
        self.sync_timer = QTimer(view)
        self.sync_timer.setSingleShot(True)
        self.sync_timer.setInterval(0)
        self.sync_timer.timeout.connect(self.sync_prompts)
        view.cycle_btn.clicked.connect(lambda: self.cycle_candidate(1))
        view.text_btn.clicked.connect(lambda: self.prompt_text())
        view.text_edit.returnPressed.connect(lambda: self.prompt_text())
        ws.activity.wait_for(lambda: bool(self.pending) or self.sync_timer.isActive())
        ws.activity.on_free.append(self.run_pending)
        ws.on_bound(self._bound)
        ws.on_change(self._show)

    def _bound(self) -> None:
        self.pending.clear()
        for ly in (self.ws.layers.points, self.ws.layers.shapes):
            ly.events.data.connect(self.on_prompt_layer_event)
        self.view.candidates_label.setText("Candidates: add a point or a box.")
        self._update_text_support()

    def _show(self, event: str | None, slices: list[int] | None) -> None:
        layers = self.ws.layers
        if slices is not None:
            layers.show_slices(slices)
            return
        layers.show_object()
        self.ws.syncing = True
        try:
            layers.show_prompts()
        finally:
            self.ws.syncing = False
        self.pending.clear()

    # ---------------------------------------------------------------- prompts
    def on_prompt_layer_event(self, event: Any = None) -> None:
        if self.ws.syncing:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # "adding", "changing", "removing": wait for the end
            return
        if action.endswith("added") and event.source is self.ws.layers.points:
            # a click: start its preview now, before napari repaints the canvas (the
            # zero-delay timer would run only after that repaint, 50-150 ms later)
            self.sync_timer.stop()
            self.sync_prompts()
            return
        self.sync_timer.start()

    def sync_prompts(self) -> None:
        """Diff the prompt layers against the current object's prompts; preview changes."""
        s, layers = self.ws.session, self.ws.layers
        if s is None or s.current is None:
            return
        _layers.color_points(layers.points)
        drawn = _layers.prompts_from_layers(layers.points, layers.shapes)
        obj = s.obj()
        for z in sorted(set(drawn) | set(obj.prompts)):
            wanted = drawn.get(z, {})
            if "text" in obj.prompts.get(z, {}):  # text is not on a layer: keep it
                wanted = {**wanted, "text": obj.prompts[z]["text"]}
            if wanted != obj.prompts.get(z, {}) and (z, wanted) != self.inflight:
                self.pending[z] = wanted
        self.run_pending()

    def run_pending(self) -> None:
        ws = self.ws
        if ws.closed or not self.pending or ws.activity.running("preview", "job"):
            return
        z = next(iter(self.pending))
        prompt = self.pending.pop(z)
        label = ws.session.current
        if not prompt:
            ws.session.set_prompt(label, z, {}, None)
            ws.changed()
            self.run_pending()
            return
        model_prompt = ws.session.model_prompt(label, z, prompt)
        self.inflight = (z, prompt)
        if self._preview_here(label, z, prompt, model_prompt):
            return
        if not ws.engine.is_embedded(z):
            ws.activity.say(f"Embedding slice {z}...")
        ws.activity.run(
            "preview", f"2D prediction on slice {z}", _workers.preview, ws.engine, z, model_prompt,
            on_yield=lambda pv: self.preview_done(label, z, prompt, pv),
            on_done=self._candidates_ready, on_fail=self._preview_failed,
            on_finished=self._preview_finished,
        )  # fmt: skip

    def _preview_here(self, label: int, z: int, prompt: dict, model_prompt: Any) -> bool:
        """Show the first mask of a preview decoded in this (GUI) thread, before napari
        repaints; the other candidates follow from a worker. False: use the worker path
        (the slice is not embedded, or a 3D job holds the engine)."""
        ws, action = self.ws, f"2D prediction on slice {z}"
        threads = 1 if ws.activity.running("embed") else None  # share the CPU with it
        try:
            started = _workers.first_preview(ws.engine, z, model_prompt, threads)
        except Exception as exc:  # reported like a worker's failure; nothing changes
            self.inflight = None
            self._preview_failed(_workers.Failure(action, exc, traceback.format_exc()))
            return True
        if started is None:
            return False
        first, rest = started
        self.preview_done(label, z, prompt, first)
        ws.activity.run(
            "preview", action, _workers.rest_of_preview, rest,
            on_done=self._candidates_ready, on_fail=self._preview_failed,
            on_finished=self._preview_finished,
        )  # fmt: skip
        return True

    def _preview_failed(self, failure: _workers.Failure) -> None:
        """Report, and put the prompt layers back to the state the session still holds."""
        self.ws.failed(failure)
        self._show(None, None)

    def _preview_finished(self) -> None:
        self.inflight = None

    def preview_done(self, label: int, z: int, prompt: dict, preview: Any) -> None:
        ws = self.ws
        ws.session.set_prompt(label, z, prompt, preview)
        self.view.candidates_label.setText(f"Slice {z} candidates: {preview.describe()}")
        ws.activity.say(f"Slice {z}: mask of {preview.chosen.area} px")
        ws.changed(slices=[z])
        if ws.session.obj(label).propagated and self.volume.view.repropagate_check.isChecked():
            self.volume.start_job(ws.session.correction_job(ws.engine, z, label))

    def _candidates_ready(self, full: Any) -> None:
        """The ambiguity candidates arrived after the mask was shown: offer them for cycling."""
        s = self.ws.session
        last = s.last_preview
        if last is not None and last[1].z == full.z and last[1].chosen is full.chosen:
            s.last_preview = (last[0], full)
            self.view.candidates_label.setText(f"Slice {full.z} candidates: {full.describe()}")

    def cycle_candidate(self, step: int = 1) -> None:
        """Show the next (or previous) ambiguity candidate of the last 2D preview."""
        ws = self.ws
        if not ws.need_engine():
            return
        try:
            preview = ws.session.cycle_candidate(step)
        except ValueError as exc:
            ws.notify(str(exc), error=True)
            return
        self.view.candidates_label.setText(f"Slice {preview.z} candidates: {preview.describe()}")
        ws.changed(slices=[preview.z])

    # ------------------------------------------------------------------ text
    def _update_text_support(self) -> None:
        v = self.view
        dim = getattr(self.ws.engine.model.config, "text_dim", None)
        ok = dim is not None
        v.text_edit.setEnabled(ok)
        v.text_btn.setEnabled(ok)
        v.text_label.setText(
            f"Text prompts: this model takes {dim}-d text embeddings (encoder from its checkpoint)."
            if ok
            else "Text prompts: this model has no text-prompt support (text_dim=None). Use "
            "points or boxes, or load a checkpoint trained with text prompts."
        )

    def prompt_text(self, text: str | None = None) -> None:
        """Prompt the current object on the slice in view with text (with its points/box);
        an empty text removes the slice's text prompt."""
        ws = self.ws
        if not ws.need_engine():
            return
        if getattr(ws.engine.model.config, "text_dim", None) is None:
            ws.notify("This model has no text-prompt support; use points or boxes.", True)
            return
        text = (self.view.text_edit.text() if text is None else text).strip()
        z, obj = ws.current_z(), ws.session.obj()
        prompt = dict(obj.prompts.get(z, {}))
        if text:
            prompt["text"] = text
        else:
            prompt.pop("text", None)
        self.pending[z] = prompt
        self.run_pending()
