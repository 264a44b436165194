"""The "SAM-Med" dock widget: setup, embeddings, prompts, 2D preview and 3D jobs.

State lives in a :class:`~._session.Session`, compute in thread workers (``_workers``), and
the user talks to it through napari layers (``_layers``). Object management, undo/redo,
saving and autosave are in :class:`~._objects.ObjectsMixin`; 3D jobs, QC navigation and the
mask display in :class:`~._jobs.JobsMixin`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from . import _layers, _ui, _workers
from ._datasets import DatasetsMixin
from ._engine import default_preset as _guess_preset
from ._engine import prepare_image
from ._jobs import JobsMixin
from ._objects import ObjectsMixin
from ._review import ReviewMixin

logger = logging.getLogger(__name__)

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


class SamMedWidget(JobsMixin, ObjectsMixin, ReviewMixin, DatasetsMixin, QWidget):
    """Segment tumours with points and boxes on 2D slices and whole 3D volumes."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        _ui.build(self, PRESETS)
        self.engine: Any = None
        self.session: Any = None
        self.image_layer: Any = None
        self.points_layer = self.shapes_layer = self.preview_layer = self.labels_layer = None
        self._embed_worker: Any = None
        self._job_worker: Any = None
        self._preview_worker: Any = None
        self._export_worker: Any = None
        self._pending: dict[int, dict] = {}
        self._inflight: tuple[int, dict] | None = None
        self._autosaves = 0
        self._closed = False
        self._syncing = False
        self._sync_timer = QTimer(self)
        self._sync_timer.setSingleShot(True)
        self._sync_timer.setInterval(0)
        self._sync_timer.timeout.connect(self._sync_prompts)
        self._connect()
        self._refresh_images()

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        self.image_combo.currentIndexChanged.connect(self._on_image_choice)
        self.load_btn.clicked.connect(self.load_model)
        self.precompute_btn.clicked.connect(self.precompute)
        self.cancel_btn.clicked.connect(self.cancel)
        self.cycle_btn.clicked.connect(lambda: self.cycle_candidate(1))
        self.segment3d_btn.clicked.connect(self.segment3d)
        self.next_flag_btn.clicked.connect(lambda: self.next_flagged(1))
        self.flagged_list.itemActivated.connect(lambda item: self.go_to(int(item.text())))
        self._connect_objects()
        self._connect_review()
        self._connect_datasets()
        for key, fn in self._key_actions().items():
            self.viewer.bind_key(key, fn, overwrite=True)

    def _key_actions(self) -> dict[str, Any]:
        """Viewer key bindings (listed in ``_ui.SHORTCUTS``, the widget help and the docs)."""
        return {
            "W": lambda _v: self.cycle_candidate(1),
            "Shift+W": lambda _v: self.cycle_candidate(-1),
            "G": lambda _v: self.segment3d(),
            "J": lambda _v: self.next_flagged(1),
            "Shift+J": lambda _v: self.next_flagged(-1),
            "N": lambda _v: self.new_object(),
            "K": lambda _v: self.commit(),
            "Ctrl+Z": lambda _v: self.undo(),
            "Ctrl+Shift+Z": lambda _v: self.redo(),
            "Escape": lambda _v: self.cancel(),
            "Q": lambda _v: self.propose(),
            "U": lambda _v: self.accept_proposal(),
            "H": lambda _v: self.reject_proposal(),
            "Shift+Q": lambda _v: self.skip_proposal(),
        }

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop reacting to the viewer, cancel running jobs and release the key bindings."""
        if self._closed:
            return
        self._closed = True
        self.viewer.layers.events.inserted.disconnect(self._refresh_images)
        self.viewer.layers.events.removed.disconnect(self._refresh_images)
        self.viewer.dims.events.current_step.disconnect(self._on_slice_changed)
        self.cancel()
        for key in self._key_actions():
            self.viewer.bind_key(key, None, overwrite=True)

    def busy(self) -> bool:
        """Whether a worker is running or a prompt waits for one."""
        return bool(
            self._embed_worker
            or self._job_worker
            or self._preview_worker
            or self._export_worker
            or self._pending
            or self._autosaves
            or self._sync_timer.isActive()
            or bool(getattr(self, "_painted", None))
        )

    def alive(self) -> bool:
        """False once Qt has deleted the widget (e.g. the viewer closed)."""
        try:
            self.objectName()
        except RuntimeError:
            return False
        return True

    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image)]

    def _refresh_images(self, *_: Any) -> None:
        if self.image_layer is not None and self.image_layer not in self.viewer.layers:
            self._drop_image()
        current = self.image_combo.currentText()
        names = [ly.name for ly in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if names and current not in names:
            self._on_image_choice()

    def _drop_image(self) -> None:
        """The segmented image was closed: stop its jobs and forget its model binding."""
        self.cancel()
        self.engine = self.session = self.image_layer = None
        self.status.setText("The image was closed; pick an image and Load model.")

    def _on_image_choice(self, *_: Any) -> None:
        layer = self._chosen_image()
        if layer is not None:
            # "auto" is resolved from the data in the loading worker (it needs torch).
            self.preset_combo.setCurrentText(layer.metadata.get("sam_med_preset") or "auto")

    def _chosen_image(self) -> Any:
        name = self.image_combo.currentText()
        return next((ly for ly in self._image_layers() if ly.name == name), None)

    def _start(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Start a worker whose callbacks stop once the widget is gone."""
        return _workers.start(action, fn, *args, alive=self.alive, **kwargs)

    # -------------------------------------------------------------- messages
    def notify(self, text: str, error: bool = False) -> None:
        """Show ``text`` in the widget and as a napari notification."""
        from napari.utils.notifications import show_error, show_info

        self.status.setText(text)
        (show_error if error else show_info)(text)

    def _failed(self, failure: _workers.Failure) -> None:
        self.notify(failure.message(), error=True)

    def _need_engine(self) -> bool:
        if self.engine is None or self.session is None:
            self.notify("Load a model first (Setup > Load model).", error=True)
            return False
        return True

    # ------------------------------------------------------------------ model
    def model_choice(self) -> tuple[str, str | None]:
        """``(name or checkpoint path, checkpoint or None)`` from the Setup controls."""
        name = self.model_combo.currentText()
        ckpt = self.checkpoint_edit.text().strip() or None
        if name == "checkpoint file":
            if not ckpt:
                raise ValueError("choose a checkpoint file for 'checkpoint file'")
            return ckpt, None
        return name, ckpt

    def load_model(self) -> Any:
        """Build the model and bind it to the chosen image in a worker."""
        layer = self._chosen_image()
        if layer is None:
            self.notify("Open an image first (File > Open, or a SAM-Med sample).", error=True)
            return None
        try:
            name, ckpt = self.model_choice()
            image = prepare_image(layer.data, layer.rgb)
        except ValueError as exc:
            self.notify(f"Cannot load: {exc}", error=True)
            return None
        self.load_btn.setEnabled(False)
        self._set_busy(f"Loading {name}...", 0, 0)
        preset, device = self.preset_combo.currentText(), self.device_combo.currentText()
        if preset == "auto":
            preset = (_guess_preset, layer.data, layer.rgb, layer.metadata.get("modality"))
        return self._start(
            f"Loading model {name!r}",
            _workers.load_engine,
            name,
            ckpt,
            device,
            image,
            preset,
            spacing=_layers.spacing_xyz(layer),
            precision="bf16" if self.fast_check.isChecked() else "fp32",
            on_done=lambda engine: self._engine_ready(engine, layer),
            on_fail=self._failed,
            on_finished=lambda: (self.load_btn.setEnabled(True), self._set_idle()),
        )

    def _engine_ready(self, engine: Any, layer: Any) -> None:
        from ._session import Session

        self.cancel()
        self.engine, self.image_layer = engine, layer
        self.preset_combo.setCurrentText(engine.preset)
        geom = layer.metadata.get(_layers.GEOMETRY_KEY) or {}
        shape = (engine.num_slices, *engine.segmenter.slice_shape)
        info = {
            "name": layer.name,
            "shape_zyx": list(shape),
            "rgb": bool(layer.rgb),
            "volume_hash": engine.segmenter.volume_hash,
            **geom,
        }
        self.session = Session(shape, _layers.spacing_xyz(layer), info)
        self.session.model_info, self.session.preset = dict(engine.model_info), engine.preset
        self._make_layers(layer)
        self._proposals = None
        self._show_proposals()
        self._update_text_support()
        self.session.new_object()
        self._after_change()
        self.notify(
            f"Model {engine.model_info['name']} ready on {layer.name} "
            f"({engine.preset}). Click to add points, press R to draw boxes."
        )
        self._check_autosave()
        self._on_slice_changed()

    def _make_layers(self, image: Any) -> None:
        old = (self.points_layer, self.shapes_layer, self.preview_layer, self.labels_layer,
               self.proposals_layer)  # fmt: skip
        for ly in old:
            if ly is not None and ly in self.viewer.layers:
                self.viewer.layers.remove(ly)
        nd = 3 if self.session.shape[0] > 1 or image.ndim - int(image.rgb) == 3 else 2
        geo = {"scale": image.scale[-nd:], "translate": image.translate[-nd:]}
        view = (lambda a: a) if nd == 3 else (lambda a: a[0])
        self._view = view
        self.labels_layer = self.viewer.add_labels(
            view(self.session.labels),
            name="SAM-Med labels",
            opacity=0.6,
            metadata=dict(image.metadata),
            **geo,
        )
        self._watch_paint(self.labels_layer)
        self._preview = np.zeros(self.session.shape, np.uint8)
        self.preview_layer = self.viewer.add_labels(
            view(self._preview), name="SAM-Med preview", opacity=0.7, **geo
        )
        self.shapes_layer = self.viewer.add_shapes(
            ndim=nd,
            name="SAM-Med boxes",
            edge_color="yellow",
            face_color="transparent",
            edge_width=1.5,
            **geo,
        )
        self.points_layer = self.viewer.add_points(
            ndim=nd,
            name="SAM-Med points",
            size=max(3.0, self.session.shape[-1] / 60),
            features={"label": np.zeros(0, np.int64)},
            **geo,
        )
        _layers.set_point_label(self.points_layer, True)
        self.points_layer.mouse_drag_callbacks.insert(0, _layers.click_sign_callback)
        for ly in (self.points_layer, self.shapes_layer):
            ly.events.data.connect(self._on_prompt_layer_event)
        self.points_layer.mode = "add"
        self.viewer.layers.selection.active = self.points_layer

    # ------------------------------------------------------------- embeddings
    def current_z(self) -> int:
        """The image slice shown in the viewer."""
        if self.image_layer is None:
            return 0
        return _layers.current_slice(self.image_layer, self.viewer)

    def go_to(self, z: int) -> None:
        """Show slice ``z``."""
        if self.image_layer is not None:
            _layers.go_to_slice(self.image_layer, self.viewer, int(z))

    def _on_slice_changed(self, *_: Any) -> None:
        """Embed the slice in view in the background (lazily), unless a job is running."""
        if self.engine is None or self._embed_worker is not None or self._closed:
            return
        z = self.current_z()
        if not self.engine.is_embedded(z):
            self._start_embedding([z], f"Embedding slice {z}")

    def precompute(self) -> Any:
        """Embed every slice (fills the on-disk cache); cancel with Cancel or Escape."""
        if not self._need_engine():
            return None
        if self._embed_worker is not None:
            self._embed_worker.quit()
        todo = [z for z in range(self.engine.num_slices) if not self.engine.is_embedded(z)]
        return self._start_embedding(todo, "Precomputing the volume")

    def _start_embedding(self, slices: list[int], what: str) -> Any:
        self._set_busy(what, 0, len(slices))

        def step(p: tuple[int, int, int]) -> None:
            self.progress.setValue(p[0])
            self.status.setText(f"{what}: {p[0]}/{p[1]} (slice {p[2]})")

        def done(*_: Any) -> None:
            self._embed_worker = None
            self._set_idle()
            self._on_slice_changed()

        self._embed_worker = self._start(
            what,
            _workers.embed_slices,
            self.engine,
            slices,
            on_yield=step,
            on_fail=self._failed,
            on_finished=done,
        )
        return self._embed_worker

    def cancel(self) -> None:
        """Stop the running embedding or 3D job (a 3D job's result is then discarded)."""
        for worker in (self._embed_worker, self._job_worker):
            if worker is not None:
                worker.quit()

    def _set_busy(self, text: str, value: int, total: int) -> None:
        self.status.setText(text)
        self.progress.setRange(0, max(total, 0))
        self.progress.setValue(value)
        self.cancel_btn.setEnabled(True)

    def _set_idle(self) -> None:
        running = self._embed_worker is not None or self._job_worker is not None
        self.cancel_btn.setEnabled(running)
        if not running:
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
