"""Prompts -> 2D previews, 3D jobs (Segment 3D, corrections), QC navigation and the mask
display of the SAM-Med widget."""

from __future__ import annotations

from typing import Any

from . import _layers, _workers


class JobsMixin:
    """Methods of :class:`~._widget.SamMedWidget` about prompts, propagation and the preview."""

    # ---------------------------------------------------------------- prompts
    def _on_prompt_layer_event(self, event: Any = None) -> None:
        if self._syncing:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # "adding", "changing", "removing": wait for the end
            return
        if action.endswith("added") and event.source is self.points_layer:
            # a click: start its preview now, before napari repaints the canvas (the
            # zero-delay timer would run only after that repaint, 50-150 ms later)
            self._sync_timer.stop()
            self._sync_prompts()
            return
        self._sync_timer.start()

    def _sync_prompts(self) -> None:
        """Diff the prompt layers against the current object's prompts; preview changes."""
        if self.session is None or self.session.current is None:
            return
        _layers.color_points(self.points_layer)
        layers = _layers.prompts_from_layers(self.points_layer, self.shapes_layer)
        obj = self.session.obj()
        for z in sorted(set(layers) | set(obj.prompts)):
            wanted = layers.get(z, {})
            if "text" in obj.prompts.get(z, {}):  # text is not on a layer: keep it
                wanted = {**wanted, "text": obj.prompts[z]["text"]}
            if wanted != obj.prompts.get(z, {}) and (z, wanted) != self._inflight:
                self._pending[z] = wanted
        self._run_pending()

    def _run_pending(self) -> None:
        if self._closed or not self._pending or self._preview_worker or self._job_worker:
            return
        z = next(iter(self._pending))
        prompt = self._pending.pop(z)
        label = self.session.current
        if not prompt:
            self.session.set_prompt(label, z, {}, None)
            self._after_change()
            self._run_pending()
            return
        model_prompt = self.session.model_prompt(label, z, prompt)
        self._inflight = (z, prompt)
        if not self.engine.is_embedded(z):
            self.status.setText(f"Embedding slice {z}...")
        self._preview_worker = self._start(
            f"2D prediction on slice {z}",
            _workers.preview,
            self.engine,
            z,
            model_prompt,
            on_yield=lambda pv: self._preview_done(label, z, prompt, pv),
            on_done=self._candidates_ready,
            on_fail=self._preview_failed,
            on_finished=self._preview_finished,
        )

    def _preview_failed(self, failure: _workers.Failure) -> None:
        """Report, and put the prompt layers back to the state the session still holds."""
        self._failed(failure)
        self._layers_from_session()

    def _preview_finished(self) -> None:
        self._preview_worker = self._inflight = None
        self._run_pending()

    def _preview_done(self, label: int, z: int, prompt: dict, preview: Any) -> None:
        self.session.set_prompt(label, z, prompt, preview)
        self.candidates_label.setText(f"Slice {z} candidates: {preview.describe()}")
        self.status.setText(f"Slice {z}: mask of {preview.chosen.area} px")
        self._after_change(slices=[z])
        obj = self.session.obj(label)
        if obj.propagated and self.repropagate_check.isChecked():
            self._start_job(self.session.correction_job(self.engine, z, label))

    def _candidates_ready(self, full: Any) -> None:
        """The ambiguity candidates arrived after the mask was shown: offer them for cycling."""
        last = self.session.last_preview
        if last is not None and last[1].z == full.z and last[1].chosen is full.chosen:
            self.session.last_preview = (last[0], full)
            self.candidates_label.setText(f"Slice {full.z} candidates: {full.describe()}")

    def cycle_candidate(self, step: int = 1) -> None:
        """Show the next (or previous) ambiguity candidate of the last 2D preview."""
        if not self._need_engine():
            return
        try:
            preview = self.session.cycle_candidate(step)
        except ValueError as exc:
            self.notify(str(exc), error=True)
            return
        self.candidates_label.setText(f"Slice {preview.z} candidates: {preview.describe()}")
        self._after_change(slices=[preview.z])

    # ------------------------------------------------------------------- 3D
    def segment3d(self) -> Any:
        """Propagate the current object from every slice that has prompts."""
        if not self._need_engine():
            return None
        try:
            job = self.session.segment3d_job(self.engine)
        except (ValueError, KeyError) as exc:
            self.notify(f"Segment 3D: {exc}", error=True)
            return None
        return self._start_job(job)

    def _start_job(self, job: Any) -> Any:
        if self._job_worker is not None:
            self.notify("A 3D job is already running; wait or cancel it.", error=True)
            return None
        what = "Segment 3D" if job.kind == "segment3d" else f"Correction from slice {job.z}"
        self._set_busy(f"{what}...", 0, 0)

        def step(p: Any) -> None:
            total = p.total or 0
            self.progress.setRange(0, total)
            self.progress.setValue(p.done if total else 0)
            self.status.setText(f"{what}: {p.done} slices ({p.message}, slice {p.z})")
            if job.label == self.session.current:
                self._show_slices([p.z], job.work)

        def finished() -> None:
            self._job_worker = None
            self._set_idle()
            self._after_change()
            self._run_pending()

        self._job_worker = self._start(
            what,
            _workers.run_job,
            job,
            on_yield=step,
            on_done=self._job_done,
            on_fail=self._failed,
            on_finished=finished,
        )
        return self._job_worker

    def _job_done(self, job: Any) -> None:
        self.session.finish_job(job)
        s = self.session.summary(job.label)
        flagged = s["flagged_slices"]
        self.notify(
            f"{job.kind}: object {job.label} spans slices {s['slices']}; "
            f"{len(flagged)} flagged for review"
        )

    def next_flagged(self, step: int = 1) -> int | None:
        """Jump to the next (or previous) slice the QC trace flags; returns it."""
        if self.session is None or self.session.current is None:
            return None
        flagged = self.session.obj().seg.flagged_slices()
        if not flagged:
            self.status.setText("No flagged slices.")
            return None
        z = self.current_z()
        after = [f for f in flagged if (f - z) * step > 0]
        target = (
            min(after, key=lambda f: abs(f - z))
            if after
            else (flagged[0] if step > 0 else flagged[-1])
        )
        self.go_to(target)
        return target

    # ------------------------------------------------------------- display
    def _show_slices(self, slices: list[int], obj: Any = None) -> None:
        obj = obj if obj is not None else self.session.obj()
        for z in slices:
            pred = obj.seg.slices.get(z)
            self._preview[z] = 0 if pred is None else pred.mask
        self.preview_layer.refresh()

    def _show_object(self) -> None:
        if self.session.current is None:
            self._preview[:] = 0
        else:
            obj = self.session.obj()
            self._preview[:] = obj.seg.to_mask(self.session.shape)
            if getattr(self, "_preview_color", None) != obj.color:
                self.preview_layer.colormap = _layers.label_colormap({1: obj.color})
                self._preview_color = obj.color
        self.preview_layer.refresh()
