"""The "Model" panel: which image, which model, loading it, and the slice embeddings.

Loading builds the model and binds it to the image in a worker; on success the workspace
gets a new ``Engine``, ``Session`` and prompt layers, and every panel hears
:meth:`Workspace.bound`. The slice in view is embedded lazily in the background;
"Precompute volume" embeds them all (the on-disk cache keeps them).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QPushButton, QWidget

from . import _layers, _workers
from ._engine import default_preset as _guess_preset
from ._engine import prepare_image
from ._ui import DEVICES, MODELS, path_field, row
from ._workspace import Workspace

PRESETS = [
    "auto",
    "ct_soft_tissue",
    "ct_lung",
    "ct_bone",
    "ct_brain",
    "ct_liver",
    "mr",
    "minmax",
    "identity",
]  # fmt: skip  (kept in sync with preprocessing.PRESETS by a test; importing it loads torch)


class ModelView(QWidget):
    """Image, model, checkpoint, device, preset, fast/int8 mode; Load and Precompute."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItems([*MODELS, "checkpoint file"])
        self.checkpoint_edit, self.checkpoint_browse_btn = path_field(
            "checkpoint (.pth/.pt) or ONNX export folder"
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(PRESETS)
        self.fast_check = QCheckBox("Fast mode (bfloat16 encoder)")
        self.fast_check.setToolTip(
            "Runs the image encoder in bfloat16: faster embeddings on CPUs with AVX512-BF16, "
            "masks differ slightly (see docs/speed.md). Not for ONNX exports."
        )
        self.int8_check = QCheckBox("Int8 mode (dynamic int8 encoder linears)")
        self.int8_check.setToolTip(
            "Runs the TinyViT encoder's transformer linear layers (LiteMedSAM-type models, CPU) "
            "as dynamic int8 products: faster embeddings on CPUs with VNNI, masks differ "
            "slightly (see docs/speed.md). Not with the fast mode, not for ONNX exports."
        )
        # one precision at a time: ticking one mode clears the other
        self.fast_check.toggled.connect(lambda on: on and self.int8_check.setChecked(False))
        self.int8_check.toggled.connect(lambda on: on and self.fast_check.setChecked(False))
        self.load_btn = QPushButton("Load model")
        self.precompute_btn = QPushButton("Precompute volume")
        form = QFormLayout(self)
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Checkpoint", row(self.checkpoint_edit, self.checkpoint_browse_btn))
        form.addRow("Device", self.device_combo)
        form.addRow("Preset", self.preset_combo)
        form.addRow(self.fast_check)
        form.addRow(self.int8_check)
        form.addRow(row(self.load_btn, self.precompute_btn))

    def precision(self) -> str:
        """The encoder precision the checkboxes ask for: ``fp32``, ``bf16`` or ``int8``."""
        if self.fast_check.isChecked():
            return "bf16"
        return "int8" if self.int8_check.isChecked() else "fp32"


class ModelPanel:
    """Loads models onto images and keeps the slice in view embedded."""

    def __init__(self, ws: Workspace, view: ModelView) -> None:
        self.ws, self.view = ws, view
        view.image_combo.currentIndexChanged.connect(self._on_image_choice)
        view.load_btn.clicked.connect(self.load_model)
        view.precompute_btn.clicked.connect(self.precompute)
        view.checkpoint_browse_btn.clicked.connect(self._browse_checkpoint)
        ws.activity.on_free.append(self.on_slice_changed)  # after a job: the slice in view

    def connect_viewer(self, connect: bool) -> None:
        """Follow the viewer's layers and slice (``connect=False``: stop)."""
        viewer = self.ws.viewer
        pairs = ((viewer.layers.events.inserted, self.refresh_images),
                 (viewer.layers.events.removed, self.refresh_images),
                 (viewer.dims.events.current_step, self.on_slice_changed))  # fmt: skip
        for emitter, fn in pairs:
            (emitter.connect if connect else emitter.disconnect)(fn)

    # ----------------------------------------------------------------- images
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [ly for ly in self.ws.viewer.layers if isinstance(ly, Image)]

    def refresh_images(self, *_: Any) -> None:
        ws, combo = self.ws, self.view.image_combo
        if ws.image_layer is not None and ws.image_layer not in ws.viewer.layers:
            self._drop_image()
        current = combo.currentText()
        names = [ly.name for ly in self._image_layers()]
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        if current in names:
            combo.setCurrentText(current)
        combo.blockSignals(False)
        if names and current not in names:
            self._on_image_choice()

    def _drop_image(self) -> None:
        """The segmented image was closed: stop its jobs and forget its model binding."""
        self.ws.activity.cancel()
        self.ws.engine = self.ws.session = self.ws.image_layer = None
        self.ws.activity.say("The image was closed; pick an image and Load model.")

    def _on_image_choice(self, *_: Any) -> None:
        layer = self._chosen_image()
        if layer is not None:
            # "auto" is resolved from the data in the loading worker (it needs torch).
            self.view.preset_combo.setCurrentText(layer.metadata.get("sam_med_preset") or "auto")

    def _chosen_image(self) -> Any:
        name = self.view.image_combo.currentText()
        return next((ly for ly in self._image_layers() if ly.name == name), None)

    def _browse_checkpoint(self) -> None:
        v = self.view
        path, _ = QFileDialog.getOpenFileName(
            v, "Model checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)"
        )
        if path:
            v.checkpoint_edit.setText(path)
            if not v.model_combo.currentText().startswith(("vit_", "medsam_vit")):
                v.model_combo.setCurrentText("checkpoint file")

    # ------------------------------------------------------------------ model
    def model_choice(self) -> tuple[str, str | None]:
        """``(name or checkpoint path, checkpoint or None)`` from the controls."""
        name = self.view.model_combo.currentText()
        ckpt = self.view.checkpoint_edit.text().strip() or None
        if name == "checkpoint file":
            if not ckpt:
                raise ValueError("choose a checkpoint file for 'checkpoint file'")
            return ckpt, None
        return name, ckpt

    def load_model(self) -> Any:
        """Build the model and bind it to the chosen image in a worker."""
        ws, v = self.ws, self.view
        layer = self._chosen_image()
        if layer is None:
            ws.notify("Open an image first (File > Open, or a SAM-Med sample).", error=True)
            return None
        try:
            name, ckpt = self.model_choice()
            image = prepare_image(layer.data, layer.rgb)
        except ValueError as exc:
            ws.notify(f"Cannot load: {exc}", error=True)
            return None
        v.load_btn.setEnabled(False)
        ws.activity.set_busy(f"Loading {name}...", 0, 0)
        preset, device = v.preset_combo.currentText(), v.device_combo.currentText()
        if preset == "auto":
            preset = (_guess_preset, layer.data, layer.rgb, layer.metadata.get("modality"))
        return ws.activity.start(
            f"Loading model {name!r}", _workers.load_engine, name, ckpt, device, image, preset,
            spacing=_layers.spacing_xyz(layer),
            precision=v.precision(),
            on_done=lambda engine: self._engine_ready(engine, layer),
            on_fail=ws.failed,
            on_finished=lambda: (v.load_btn.setEnabled(True), ws.activity.set_idle()),
        )  # fmt: skip

    def _engine_ready(self, engine: Any, layer: Any) -> None:
        from ._display import PromptLayers
        from ._session import Session

        ws = self.ws
        ws.activity.cancel()
        ws.engine, ws.image_layer = engine, layer
        self.view.preset_combo.setCurrentText(engine.preset)
        _show_in_window(layer, engine.preset)
        geom = layer.metadata.get(_layers.GEOMETRY_KEY) or {}
        shape = (engine.num_slices, *engine.segmenter.slice_shape)
        info = {"name": layer.name, "shape_zyx": list(shape), "rgb": bool(layer.rgb),
                "volume_hash": engine.segmenter.volume_hash, **geom}  # fmt: skip
        ws.session = Session(shape, _layers.spacing_xyz(layer), info)
        ws.session.model_info, ws.session.preset = dict(engine.model_info), engine.preset
        outline, kept = True, {}
        if ws.layers is not None:
            outline, kept = ws.layers.preview.contour > 0, ws.layers.remove()
        ws.layers = PromptLayers(ws.viewer, ws.session, layer, outline=outline)
        ws.layers.extra.update(kept)
        ws.session.new_object()
        ws.bound()
        ws.changed()
        ws.notify(
            f"Model {engine.model_info['name']} ready on {layer.name} "
            f"({engine.preset}). Click to add points, press R to draw boxes."
        )
        self.on_slice_changed()

    # ------------------------------------------------------------- embeddings
    def on_slice_changed(self, *_: Any) -> None:
        """Embed the slice in view in the background (lazily), unless a job is running.

        A 3D job embeds the slices it reaches itself: embedding the slice in view beside it
        (a user scrolling to watch the job) computed slices twice, on cores the job needed.
        The slice in view is embedded when the job ends.
        """
        ws = self.ws
        if ws.engine is None or ws.activity.running("embed", "job") or ws.closed:
            return
        z = ws.current_z()
        if not ws.engine.is_embedded(z):
            self._start_embedding([z], f"Embedding slice {z}")

    def precompute(self) -> Any:
        """Embed every slice (fills the on-disk cache); cancel with Cancel or Escape."""
        ws = self.ws
        if not ws.need_engine():
            return None
        if ws.activity.running("embed"):
            ws.activity.workers["embed"].quit()
        todo = [z for z in range(ws.engine.num_slices) if not ws.engine.is_embedded(z)]
        return self._start_embedding(todo, "Precomputing the volume")

    def _start_embedding(self, slices: list[int], what: str) -> Any:
        act = self.ws.activity
        before = act.text()
        act.set_busy(what, 0, len(slices))

        def step(p: tuple[int, int, int]) -> None:
            act.view.progress.setValue(p[0])
            act.say(f"{what}: {p[0]}/{p[1]} (slice {p[2]})")

        def done() -> None:
            if act.text().startswith(what):  # nothing else was said meanwhile: no stale text
                act.say(before if len(slices) == 1 else f"{what}: done ({len(slices)} slices).")

        return act.run(
            "embed", what, _workers.embed_slices, self.ws.engine, slices,
            on_yield=step, on_fail=self.ws.failed, on_finished=done,
        )  # fmt: skip


def _show_in_window(layer: Any, preset: str) -> None:
    """A CT still shown over its full range (opened by another reader) gets the window of
    the model's preset as contrast limits; limits the user chose are left alone."""
    from ._display import ct_window

    full = tuple(layer.contrast_limits) == tuple(layer.contrast_limits_range)
    window = ct_window(layer.data, preset=preset) if full and not layer.rgb else None
    if window is not None:
        layer.contrast_limits = window
