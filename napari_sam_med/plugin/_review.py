"""Brush edits and automatic proposals for the SAM-Med widget (a mixin).

* Painting or erasing on *SAM-Med labels* with napari's brush is recorded in the session
  (which slices, how many voxels, time spent) and is undoable with the widget's undo.
* "Propose objects" (Q) finds automatic masks on the slice in view (optionally propagated
  in 3D) in a worker; the user accepts (U) or rejects (H) them one by one in the
  *SAM-Med proposals* layer, where the current proposal is yellow and the others grey.
"""

from __future__ import annotations

from typing import Any

from . import _layers, _proposals

CURRENT_COLOR = (1.0, 0.85, 0.0, 0.9)
OTHER_COLOR = (0.6, 0.6, 0.6, 0.45)


class ReviewMixin:
    """Methods of :class:`~._widget.SamMedWidget` about brush edits and proposals."""

    _proposals: Any = None
    _proposal_array: Any = None
    proposals_layer: Any = None

    def _connect_review(self) -> None:
        self.propose_btn.clicked.connect(lambda: self.propose())
        self.accept_btn.clicked.connect(lambda: self.accept_proposal())
        self.reject_btn.clicked.connect(lambda: self.reject_proposal())
        self.skip_btn.clicked.connect(lambda: self.skip_proposal())

    # ------------------------------------------------------------ brush edits
    def _watch_paint(self, layer: Any) -> None:
        """Record brush strokes on ``layer``; its Ctrl+Z / Ctrl+Shift+Z use the session's
        history (napari's own labels history would bypass the session)."""
        if getattr(self, "_paint_timer", None) is None:
            from qtpy.QtCore import QTimer

            self._painted: list[list[Any]] = []
            self._paint_timer = QTimer(self)
            self._paint_timer.setSingleShot(True)
            self._paint_timer.setInterval(0)
            self._paint_timer.timeout.connect(self._record_paint)
        layer.events.paint.connect(self._on_paint)
        layer.bind_key("Control-Z", lambda _ly: self.undo(), overwrite=True)
        layer.bind_key("Control-Shift-Z", lambda _ly: self.redo(), overwrite=True)

    def _on_paint(self, event: Any) -> None:
        """napari reports a stroke before writing its last voxels: read them a moment later."""
        if self.session is None or self._syncing:
            return
        self._painted.append(list(event.value))
        self._paint_timer.start()

    def _record_paint(self) -> None:
        strokes, self._painted = self._painted, []
        changed = False
        for atoms in strokes:
            try:
                index, before = _layers.paint_changes(atoms, self.session.shape)
            except ValueError as exc:  # an edit napari describes in an unknown way
                self.notify(f"Brush edit kept in the labels but not in the log: {exc}", True)
                continue
            changed |= self.session.record_paint(index, before) is not None
        if changed:
            self._after_change(event="paint")

    # --------------------------------------------------------------- proposals
    def propose(self) -> Any:
        """Find automatic proposals on the slice in view (in a worker; Cancel stops it)."""
        if not self._need_engine():
            return None
        if self._job_worker is not None:
            self.notify("A job is already running; wait or cancel it.", error=True)
            return None
        z = self.current_z()
        settings = _proposals.ProposalSettings(propagate=self.propagate_proposals_check.isChecked())
        labelled = self.session.labels[z] > 0
        self._set_busy(f"Proposing objects on slice {z}...", 0, 0)

        def step(p: tuple[int, int, str]) -> None:
            self.progress.setRange(0, max(p[1], 0))
            self.progress.setValue(p[0])
            self.status.setText(f"Proposals: {p[2]} ({p[0]}/{p[1]})")

        def finished() -> None:
            self._job_worker = None
            self._set_idle()
            self._run_pending()

        self._job_worker = self._start(
            "Proposing objects",
            _proposals.propose,
            self.engine,
            z,
            labelled,
            settings,
            on_yield=step,
            on_done=self._proposals_ready,
            on_fail=self._failed,
            on_finished=finished,
        )
        return self._job_worker

    def _proposals_ready(self, proposals: list[Any]) -> None:
        self._proposals = _proposals.ProposalQueue(proposals, self.session.clock)
        self.notify(
            f"{len(proposals)} proposals: accept (U) or reject (H) each one"
            if proposals
            else "No confident, stable proposal on this slice (already annotated objects "
            "are left out)."
        )
        self._show_proposals()

    def accept_proposal(self) -> Any:
        """Accept the current proposal: it becomes a committed object (undoable)."""
        return self._decide(True)

    def reject_proposal(self) -> None:
        """Reject the current proposal: it is kept in the session log as a negative."""
        self._decide(False)

    def skip_proposal(self) -> None:
        """Look at the next proposal first; the current one comes back later."""
        if self._proposals is not None:
            self._proposals.skip()
            self._show_proposals()

    def _decide(self, accept: bool) -> Any:
        if self._proposals is None or self._proposals.current is None or not self._need_engine():
            self.notify("No proposal to review: press Propose objects (Q).", error=True)
            return None
        proposal, seconds = self._proposals.take(accept)
        if accept:
            out = self._guard("accept proposal", self.session.accept_proposal, proposal, seconds)
        else:
            out = self.session.reject_proposal(proposal, seconds)
        self._show_proposals()
        return out

    def _show_proposals(self) -> None:
        """Draw the pending proposals (current one highlighted) and describe the current."""
        queue = self._proposals
        pending = queue.pending if queue is not None else []
        for b in (self.accept_btn, self.reject_btn, self.skip_btn):
            b.setEnabled(bool(pending))
        layer = self._proposal_layer()
        shown = self._proposal_array  # (Z, Y, X); the layer shows a view of it
        shown[:] = 0
        for value, p in reversed(list(enumerate(pending, start=1))):
            for z, pred in (p.slices or {p.z: p.pred}).items():
                shown[z][pred.mask] = 1 if value == 1 else 2
        layer.refresh()
        if not pending:
            done = f" (accepted {queue.accepted}, rejected {queue.rejected})" if queue else ""
            self.proposal_label.setText(f"Proposals: none left{done}")
            return
        p = pending[0]
        span = f", 3D slices {min(p.slices)}-{max(p.slices)}" if p.slices else ""
        self.proposal_label.setText(
            f"Proposal 1 of {len(pending)} (slice {p.z}): predicted IoU {p.pred.iou:.2f}, "
            f"stability {p.pred.stability:.2f}, {p.pred.area} px{span}. "
            f"Accepted {queue.accepted}, rejected {queue.rejected}."
        )
        self.go_to(p.z)

    def _proposal_layer(self) -> Any:
        import numpy as np

        layer = self.proposals_layer
        if layer is None or layer not in self.viewer.layers:
            ref = self.labels_layer
            self._proposal_array = np.zeros(self.session.shape, np.uint8)
            layer = self.viewer.add_labels(
                self._view(self._proposal_array),
                name="SAM-Med proposals",
                opacity=0.6,
                scale=ref.scale,
                translate=ref.translate,
            )
            layer.colormap = _layers.label_colormap({1: CURRENT_COLOR, 2: OTHER_COLOR})
            self.proposals_layer = layer
            self.viewer.layers.selection.active = self.points_layer
        return layer
