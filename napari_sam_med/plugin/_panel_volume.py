"""The "Segment" panel's 3D half: Segment 3D, corrections, QC navigation, preview display.

3D jobs (Segment 3D, a correction from one slice) run in the ``job`` worker slot. While a job
runs, its progress updates the status line at most a few times a second, and the preview
layer shows its finished slices in batches (drawing every slice as it came cost more than the
propagation itself on a loaded machine); the whole object is shown when the job ends.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtWidgets import QCheckBox, QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget

from . import _workers
from ._ui import row
from ._workspace import Workspace

REFRESH_S = 0.5  # at most this often, a running job's slices are drawn and its status shown


class VolumeView(QWidget):
    """Segment 3D, re-propagation, the preview display and the flagged slices."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.segment3d_btn = QPushButton("Segment 3D (G)")
        self.repropagate_check = QCheckBox("Re-propagate corrections in 3D")
        self.repropagate_check.setChecked(True)
        self.outline_check = QCheckBox("Preview as outline")
        self.outline_check.setChecked(True)
        self.outline_check.setToolTip("Outline keeps the lesion's edge visible; off fills it")
        self.flagged_list = QListWidget()
        self.flagged_list.setMaximumHeight(60)
        self.next_flag_btn = QPushButton("Next flagged slice (J)")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(row(self.segment3d_btn, self.next_flag_btn))
        lay.addWidget(row(self.repropagate_check, self.outline_check))
        lay.addWidget(QLabel("Flagged slices (QC):"))
        lay.addWidget(self.flagged_list)


class VolumePanel:
    """Runs 3D jobs for the current object and navigates its QC flags."""

    def __init__(self, ws: Workspace, view: VolumeView) -> None:
        self.ws, self.view = ws, view
        view.segment3d_btn.clicked.connect(self.segment3d)
        view.next_flag_btn.clicked.connect(lambda: self.next_flagged(1))
        view.flagged_list.itemActivated.connect(lambda item: ws.go_to(int(item.text())))
        view.outline_check.toggled.connect(self._set_outline)
        ws.on_change(self._show_flags)

    def _set_outline(self, outline: bool) -> None:
        if self.ws.layers is not None:
            self.ws.layers.set_outline(outline)

    def _show_flags(self, event: str | None, slices: list[int] | None) -> None:
        s = self.ws.session
        flagged = s.obj().seg.flagged_slices() if s.current is not None else []
        self.view.flagged_list.clear()
        self.view.flagged_list.addItems([str(z) for z in flagged])

    def segment3d(self) -> Any:
        """Propagate the current object from every slice that has prompts."""
        ws = self.ws
        if not ws.need_engine():
            return None
        try:
            job = ws.session.segment3d_job(ws.engine)
        except (ValueError, KeyError) as exc:
            ws.notify(f"Segment 3D: {exc}", error=True)
            return None
        return self.start_job(job)

    def start_job(self, job: Any) -> Any:
        """Run a 3D job (from :meth:`segment3d` or a correction) in the ``job`` slot."""
        ws, act = self.ws, self.ws.activity
        if act.running("job"):
            ws.notify("A 3D job is already running; wait or cancel it.", error=True)
            return None
        what = "Segment 3D" if job.kind == "segment3d" else f"Correction from slice {job.z}"
        act.set_busy(f"{what}...", 0, 0)
        todo: list[int] = []
        last = [0.0]

        def step(p: Any) -> None:
            todo.append(p.z)
            now = time.perf_counter()
            if now - last[0] < REFRESH_S:
                return
            last[0] = now
            act.set_progress(p.done, p.total or 0)
            act.say(f"{what}: {p.done} slices ({p.message}, slice {p.z})")
            if job.label == ws.session.current:
                ws.layers.show_slices(sorted(set(todo)), job.work)
            todo.clear()

        return act.run(
            "job", what, _workers.run_job, job, on_yield=step, on_done=self._job_done,
            on_fail=ws.failed, on_finished=ws.changed,
        )  # fmt: skip

    def _job_done(self, job: Any) -> None:
        s = self.ws.session
        s.finish_job(job)
        info = s.summary(job.label)
        flagged = info["flagged_slices"]
        self.ws.notify(
            f"{job.kind}: object {job.label} spans slices {info['slices']}; "
            f"{len(flagged)} flagged for review"
        )

    def next_flagged(self, step: int = 1) -> int | None:
        """Jump to the next (or previous) slice the QC trace flags; returns it."""
        ws = self.ws
        if ws.session is None or ws.session.current is None:
            return None
        flagged = ws.session.obj().seg.flagged_slices()
        if not flagged:
            ws.activity.say("No flagged slices.")
            return None
        z = ws.current_z()
        after = [f for f in flagged if (f - z) * step > 0]
        target = (
            min(after, key=lambda f: abs(f - z))
            if after
            else (flagged[0] if step > 0 else flagged[-1])
        )
        ws.go_to(target)
        return target
