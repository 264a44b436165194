"""The "Data engine" panel: automatic proposals reviewed one by one, and the training-set
export.

* "Propose objects" (Q) finds automatic masks on the slice in view (optionally propagated
  in 3D) in a worker; the user accepts (U) or rejects (H) them one by one in the
  *SAM-Med proposals* layer, where the current proposal is yellow and the others grey.
* "Export training set" writes the image and its committed labels (with the session log)
  into an MSD-style dataset through ``napari_sam_med.export`` (the code of
  ``sam-med export``), in a worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from . import _layers, _persist, _proposals
from ._annotate import accept_proposal, reject_proposal
from ._ui import path_field, row
from ._workspace import Workspace

CURRENT_COLOR = (1.0, 0.85, 0.0, 0.9)
OTHER_COLOR = (0.6, 0.6, 0.6, 0.45)
NO_RUN_YET = "Proposals: none yet. Press Propose objects (Q) on a slice."


class DataEngineView(QWidget):
    """Propose / accept / reject / skip, and the export folder."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.propose_btn = QPushButton("Propose objects (Q)")
        self.propagate_proposals_check = QCheckBox("propagate in 3D")
        self.proposal_label = QLabel(NO_RUN_YET)
        self.proposal_label.setWordWrap(True)
        self.accept_btn = QPushButton("Accept (U)")
        self.reject_btn = QPushButton("Reject (H)")
        self.skip_btn = QPushButton("Skip (Shift+Q)")
        for b in (self.accept_btn, self.reject_btn, self.skip_btn):
            b.setEnabled(False)
        self.export_path, self.export_browse_btn = path_field(
            "dataset folder (MSD: imagesTr, labelsTr, dataset.json)"
        )
        self.export_overwrite_check = QCheckBox("replace this case if exported")
        self.export_btn = QPushButton("Export training set")
        lay = QVBoxLayout(self)
        lay.addWidget(row(self.propose_btn, self.propagate_proposals_check))
        lay.addWidget(self.proposal_label)
        lay.addWidget(row(self.accept_btn, self.reject_btn, self.skip_btn))
        lay.addWidget(row(self.export_path, self.export_browse_btn))
        lay.addWidget(row(self.export_overwrite_check, self.export_btn))
        lay.addStretch(1)


class DataEnginePanel:
    """Proposals and export for the workspace's session."""

    def __init__(self, ws: Workspace, view: DataEngineView) -> None:
        self.ws, self.view = ws, view
        self.queue: _proposals.ProposalQueue | None = None
        view.propose_btn.clicked.connect(lambda: self.propose())
        view.accept_btn.clicked.connect(lambda: self.accept_proposal())
        view.reject_btn.clicked.connect(lambda: self.reject_proposal())
        view.skip_btn.clicked.connect(lambda: self.skip_proposal())
        view.export_btn.clicked.connect(lambda: self.export_training_set())
        view.export_browse_btn.clicked.connect(self._browse_export)
        ws.on_bound(self._bound)

    def _bound(self) -> None:
        self.queue = None
        for b in (self.view.accept_btn, self.view.reject_btn, self.view.skip_btn):
            b.setEnabled(False)
        self.view.proposal_label.setText(NO_RUN_YET)

    @property
    def layer(self) -> Any:
        """The *SAM-Med proposals* layer (None before the first proposals)."""
        return self.ws.layers.extra.get("SAM-Med proposals") if self.ws.layers else None

    def propose(self) -> Any:
        """Find automatic proposals on the slice in view (in a worker; Cancel stops it)."""
        ws, act = self.ws, self.ws.activity
        if not ws.need_engine():
            return None
        if act.running("job"):
            ws.notify("A job is already running; wait or cancel it.", error=True)
            return None
        z = ws.current_z()
        propagate = self.view.propagate_proposals_check.isChecked()
        settings = _proposals.ProposalSettings(propagate=propagate)
        labelled = ws.session.labels[z] > 0
        act.set_busy(f"Proposing objects on slice {z}...", 0, 0)

        def step(p: tuple[int, int, str]) -> None:
            act.set_progress(p[0], p[1])
            act.say(f"Proposals: {p[2]} ({p[0]}/{p[1]})")

        return act.run(
            "job", "Proposing objects", _proposals.propose, ws.engine, z, labelled, settings,
            on_yield=step, on_done=self._proposals_ready, on_fail=ws.failed,
        )  # fmt: skip

    def _proposals_ready(self, proposals: list[Any]) -> None:
        self.queue = _proposals.ProposalQueue(proposals, self.ws.session.clock)
        self.ws.notify(
            f"{len(proposals)} proposals: accept (U) or reject (H) each one"
            if proposals
            else "No confident, stable proposal on this slice (already annotated objects "
            "are left out)."
        )
        self._show()

    def accept_proposal(self) -> Any:
        """Accept the current proposal: it becomes a committed object (undoable)."""
        return self._decide(True)

    def reject_proposal(self) -> None:
        """Reject the current proposal: it is kept in the session log as a negative."""
        self._decide(False)

    def skip_proposal(self) -> None:
        """Look at the next proposal first; the current one comes back later."""
        if self.queue is not None:
            self.queue.skip()
            self._show()

    def _decide(self, accept: bool) -> Any:
        ws = self.ws
        if self.queue is None or self.queue.current is None or not ws.need_engine():
            ws.notify("No proposal to review: press Propose objects (Q).", error=True)
            return None
        proposal, seconds = self.queue.take(accept)
        if accept:
            out = ws.guard("accept proposal", accept_proposal, ws.session, proposal, seconds)
        else:
            out = reject_proposal(ws.session, proposal, seconds)
        self._show()
        return out

    def _show(self) -> None:
        """Draw the pending proposals (current one highlighted) and describe the current."""
        queue, v = self.queue, self.view
        pending = queue.pending if queue is not None else []
        for b in (v.accept_btn, v.reject_btn, v.skip_btn):
            b.setEnabled(bool(pending))
        shown = np.zeros(self.ws.session.shape, np.uint8)
        for value, p in reversed(list(enumerate(pending, start=1))):
            for z, pred in (p.slices or {p.z: p.pred}).items():
                shown[z][pred.mask] = 1 if value == 1 else 2
        if self.layer is None:
            layer = self.ws.layers.extra_layer("SAM-Med proposals", shown, 0.6)
            layer.colormap = _layers.label_colormap({1: CURRENT_COLOR, 2: OTHER_COLOR})
        else:
            self.layer.data = self.ws.layers.view(shown)
        if not pending:
            done = f" (accepted {queue.accepted}, rejected {queue.rejected})" if queue else ""
            v.proposal_label.setText(f"Proposals: none left{done}")
            return
        p = pending[0]
        span = f", 3D slices {min(p.slices)}-{max(p.slices)}" if p.slices else ""
        v.proposal_label.setText(
            f"Proposal 1 of {len(pending)} (slice {p.z}): predicted IoU {p.pred.iou:.2f}, "
            f"stability {p.pred.stability:.2f}, {p.pred.area} px{span}. "
            f"Accepted {queue.accepted}, rejected {queue.rejected}."
        )
        self.ws.go_to(p.z)

    # ----------------------------------------------------------------- export
    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.view, "Export the training set into")
        if folder:
            self.view.export_path.setText(folder)

    def _export_folder(self, folder: str | None) -> str | None:
        folder = folder or self.view.export_path.text().strip()
        if not folder:
            self._browse_export()
            folder = self.view.export_path.text().strip()
        if folder:
            self.view.export_path.setText(str(folder))
        return folder or None

    def export_training_set(self, folder: str | None = None) -> Any:
        """Add this image and its committed labels (and the session log) to the MSD-style
        dataset in ``folder`` (the folder field, else a folder dialog); runs in a worker."""
        from ..export import export_dataset

        ws = self.ws
        folder = self._export_folder(folder) if ws.need_engine() else None
        if folder is None:
            return None
        layer, s = ws.image_layer, ws.session
        if layer.rgb:
            ws.notify("Export training set: RGB images are not supported (grey only).", True)
            return None
        if not s.labels.any():
            ws.notify("Export training set: nothing committed yet; commit an object (K).", True)
            return None
        try:
            item = _export_item(layer, s)
        except ValueError as exc:
            ws.notify(f"Export training set: {exc}", error=True)
            return None
        loose = [o.label for o in s.objects if not o.committed and o.seg.slices]
        ws.activity.set_busy(f"Exporting {item.case} to {folder}...", 0, 0)

        def done(meta: dict[str, Any]) -> None:
            note = f"; objects {loose} are not committed and were left out" if loose else ""
            ws.notify(f"Exported case {item.case} to {folder} (dataset: "
                      f"{meta['numTraining']} cases){note}")  # fmt: skip

        return ws.activity.run(
            "export", "Exporting the training set", export_dataset, [item], folder,
            modality=layer.metadata.get("modality"),
            overwrite=self.view.export_overwrite_check.isChecked(),
            on_done=done, on_fail=ws.failed,
        )  # fmt: skip


def _export_item(layer: Any, s: Any) -> Any:
    """The image layer and the session's committed labels as one ``ExportItem``."""
    from ..export import ExportItem, case_name
    from ..volume.geometry import Volume

    source = (layer.metadata.get(_layers.GEOMETRY_KEY) or {}).get("path") or layer.name
    ref = _layers.reference_volume(s.shape, layer.metadata, layer.scale, layer.translate)
    data = np.asarray(layer.data)
    image = Volume(data.reshape(s.shape), ref.spacing, ref.origin, ref.direction, Path(layer.name))
    return ExportItem(
        str(source), f"labels of {layer.name} in the viewer", case_name(source),
        {o.label: o.name for o in s.objects if o.committed}, _persist.session_log(s),
        image, s.labels.copy(),
    )  # fmt: skip
