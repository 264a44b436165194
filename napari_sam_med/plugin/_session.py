"""The plugin's state without Qt: objects, prompts, committed labels, undo/redo and the log.

A :class:`Session` belongs to one image. Arrays are ``(z, y, x)`` (a 2D image is one slice,
``(1, y, x)``). Prompts are stored per slice in SAM order (points ``(x, y)``, boxes
``[x0, y0, x1, y1]`` in pixels of that slice), exactly as the user placed them.

Every user-level change goes through :meth:`Session._do`, which snapshots the objects before
and after and records the voxels a commit changed, so that undo and redo are exact and cheap
(objects share their per-slice predictions, which are never modified in place). Each change
also appends an event to :attr:`Session.events`, the session log that ``_persist.replay``
runs again, possibly with another model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..masks import box_around
from ..volume.log_state import History
from ._state import (
    Action,
    Job,
    LabelEdit,
    SessionObject,
    SlicePrompt,
    clean_prompt,
    color_for,
    touch,
)

logger = logging.getLogger(__name__)


class Session:
    """State of one image's segmentation session (brush edits, proposals and log entries are
    the functions of ``_annotate``).

    Args:
        shape: ``(Z, Y, X)`` of the image (``(1, Y, X)`` for 2D).
        spacing_xyz: voxel size in mm ``(x, y, z)``, for volumes in mL (None: pixels only).
        image_info: JSON-friendly description of the image for the log.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing_xyz: tuple[float, float, float] | None = None,
        image_info: dict[str, Any] | None = None,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing_xyz = spacing_xyz
        self.image_info = dict(image_info or {})
        self.labels = np.zeros(self.shape, np.uint16)
        self.objects: list[SessionObject] = []
        self.current: int | None = None
        self.events: list[dict[str, Any]] = []
        self.model_info: dict[str, Any] = {}
        self.preset = ""
        self.last_preview: tuple[int, Any] | None = None
        self.history: History[Action] = History()
        self.clock: Callable[[], float] = time.monotonic  # tests substitute a fake clock
        self._t0 = self.clock()

    # ------------------------------------------------------------------ queries
    def obj(self, label: int | None = None) -> SessionObject:
        """The object with ``label`` (the current object when None)."""
        label = self.current if label is None else int(label)
        for o in self.objects:
            if o.label == label:
                return o
        raise KeyError(f"no object with label {label}; create one with 'New object' first")

    def labels_in_use(self) -> set[int]:
        return {o.label for o in self.objects}

    def summary(self, label: int) -> dict[str, Any]:
        """The object's summary (label, name, voxels, slices, volume_ml, flagged slices)."""
        o = self.obj(label)
        out = o.seg.summary(self.spacing_xyz)
        out.update(color=list(o.color), committed=o.committed, propagated=o.propagated)
        return out

    def object_mask(self, label: int | None = None) -> np.ndarray:
        """The object's ``(Z, Y, X)`` bool mask (its current, possibly uncommitted result)."""
        return self.obj(label).seg.to_mask(self.shape)

    @property
    def can_undo(self) -> bool:
        return bool(self.history.undo_stack)

    @property
    def can_redo(self) -> bool:
        return bool(self.history.redo_stack)

    # ------------------------------------------------------------ undo / redo
    def _state(self) -> tuple[list[SessionObject], int | None]:
        return [o.copy() for o in self.objects], self.current

    def _restore(self, state: tuple[list[SessionObject], int | None]) -> None:
        self.objects = [o.copy() for o in state[0]]
        self.current = state[1]

    def elapsed(self) -> float:
        """Seconds since the session started (the ``t`` of every logged event)."""
        return round(self.clock() - self._t0, 3)

    def _do(self, name: str, fn: Callable[[], LabelEdit | None], event: dict) -> None:
        event.setdefault("t", self.elapsed())
        before = self._state()
        edit = fn()
        self.history.record(Action(name, before, self._state(), edit))
        self.events.append(event)

    def undo(self) -> str | None:
        """Undo the last change; returns its name (None when there is nothing to undo)."""
        return self._step_history(forward=False)

    def redo(self) -> str | None:
        """Redo the last undone change; returns its name (None when there is none)."""
        return self._step_history(forward=True)

    def _step_history(self, forward: bool) -> str | None:
        act = self.history.redo() if forward else self.history.undo()
        if act is None:
            return None
        self._restore(act.after if forward else act.before)
        if act.edit is not None:
            self.labels.flat[act.edit.index] = act.edit.after if forward else act.edit.before
        self.last_preview = None
        self.events.append({"action": "redo" if forward else "undo", "t": self.elapsed()})
        return act.name

    # ----------------------------------------------------------------- objects
    def new_object(
        self, name: str | None = None, label: int | None = None, color: Any = None
    ) -> SessionObject:
        """Add an object (next free label by default) and make it current."""
        from ..volume.objects import ObjectSegmentation

        used = self.labels_in_use() | set(np.unique(self.labels).tolist()) - {0}
        if label is None:
            label = next(i for i in range(1, len(used) + 2) if i not in used)
        if int(label) in self.labels_in_use():
            raise ValueError(f"label {label} is already used by another object")
        name = name or f"object {label}"
        col = tuple(float(c) for c in (color if color is not None else color_for(label)))
        obj = SessionObject(ObjectSegmentation(int(label), name), col)  # type: ignore[arg-type]

        def fn() -> None:
            self.objects.append(obj)
            self.current = obj.label

        self._do(
            "new object",
            fn,
            {"action": "new_object", "label": obj.label, "name": name, "color": list(col)},
        )
        return obj

    def select(self, label: int) -> None:
        """Make ``label`` the current object (not an undoable change)."""
        self.current = self.obj(label).label
        self.last_preview = None

    def delete_object(self, label: int) -> None:
        """Remove an object and its voxels from the labels map."""
        o = self.obj(label)

        def fn() -> LabelEdit:
            edit = self._edit_labels(np.flatnonzero(self.labels == o.label), 0)
            self.objects = [x for x in self.objects if x.label != o.label]
            if self.current == o.label:
                self.current = self.objects[-1].label if self.objects else None
            return edit

        self._do("delete", fn, {"action": "delete", "label": o.label})

    def relabel(self, label: int, new_label: int) -> None:
        """Give an object another label value (its committed voxels follow)."""
        o, new_label = self.obj(label), int(new_label)
        if new_label < 1:
            raise ValueError(f"label values start at 1 (0 is background); got {new_label}")
        if new_label != o.label and (
            new_label in self.labels_in_use() or np.any(self.labels == new_label)
        ):
            raise ValueError(f"label {new_label} is already used; choose a free value")

        def fn() -> LabelEdit:
            edit = self._edit_labels(np.flatnonzero(self.labels == o.label), new_label)
            o.seg.label = new_label
            if self.current == label:
                self.current = new_label
            return edit

        self._do("relabel", fn, {"action": "relabel", "label": label, "new_label": new_label})

    def rename(self, label: int, name: str) -> None:
        """Change an object's display name."""
        o = self.obj(label)

        def fn() -> None:
            o.seg.name = str(name)

        self._do("rename", fn, {"action": "rename", "label": label, "name": str(name)})

    def set_color(self, label: int, color: Any) -> None:
        """Change an object's colour (RGBA 0..1)."""
        o = self.obj(label)
        col = tuple(float(c) for c in color)

        def fn() -> None:
            o.color = col

        self._do("colour", fn, {"action": "color", "label": label, "color": list(col)})

    def commit(self, label: int | None = None) -> int:
        """Write the object into the labels map, leaving other objects' voxels untouched.

        The log's commit event records the object's time spent and its brush-edited slices.

        Returns:
            The number of voxels whose value changed.
        """
        o = self.obj(label)
        event = {"action": "commit", "label": o.label}

        def fn() -> LabelEdit:
            touch(o, self.clock())
            event.update(time=o.time_spent(), edited_slices=sorted(o.edits))
            return self._commit_voxels(o)

        self._do("commit", fn, event)
        return int(len(self.history.last.edit.index))

    def _commit_voxels(self, o: SessionObject) -> LabelEdit:
        """Write ``o`` into the labels (its old voxels cleared, other objects kept)."""
        from ..volume.objects import compose_labels

        base = np.where(self.labels == o.label, 0, self.labels).astype(np.uint16)
        target = compose_labels([o.seg], self.shape, overwrite=False, base=base)
        index = np.flatnonzero(target != self.labels)
        o.committed = True
        return self._edit_labels(index, target.flat[index])

    def _edit_labels(self, index: np.ndarray, values: Any) -> LabelEdit:
        before = self.labels.flat[index].copy()
        after = np.broadcast_to(np.asarray(values, np.uint16), before.shape).copy()
        self.labels.flat[index] = after
        return LabelEdit(index, before, after)

    # ----------------------------------------------------------------- prompts
    def set_prompt(
        self, label: int, z: int, prompt: SlicePrompt | dict[str, Any], preview: Any
    ) -> None:
        """Accept a 2D preview for the user prompt on slice ``z`` (``preview`` None clears)."""
        o, z = self.obj(label), int(z)
        prompt = clean_prompt(prompt)

        def fn() -> None:
            if preview is None:
                for d in (o.prompts, o.pins, o.seg.key_prompts):
                    d.pop(z, None)
                if not o.propagated:
                    o.seg.slices.pop(z, None)
                return
            o.prompts[z] = prompt
            o.seg.key_prompts[z] = preview.prompt
            self._pin(o, z, preview.chosen)
            touch(o, self.clock())

        event = {
            "action": "prompt",
            "label": o.label,
            "z": z,
            "prompt": prompt.to_json(),
            "model": self.model_info.get("name"),
            "preset": self.preset,
        }
        if preview is not None and clean_prompt(preview.prompt) != prompt:
            event["model_prompt"] = clean_prompt(preview.prompt).to_json()  # a context box
        self._do("prompt", fn, event)
        self.last_preview = (o.label, preview) if preview is not None else None

    def cycle_candidate(self, step: int = 1) -> Any:
        """Show the next ambiguity candidate of the last preview; returns the preview."""
        if self.last_preview is None:
            raise ValueError("no 2D preview to cycle: add a point or a box first")
        label, preview = self.last_preview
        o = self.obj(label)
        index = (preview.index + int(step)) % len(preview.candidates)

        def fn() -> None:
            preview.index = index
            self._pin(o, preview.z, preview.chosen)
            touch(o, self.clock())

        self._do(
            "candidate", fn, {"action": "candidate", "label": label, "z": preview.z, "index": index}
        )
        return preview

    @staticmethod
    def _pin(o: SessionObject, z: int, pred: Any) -> None:
        o.pins[z] = pred
        if pred.area > 0:
            o.seg.slices[z] = pred
        else:
            o.seg.slices.pop(z, None)

    def model_prompt(self, label: int, z: int, prompt: dict[str, Any]) -> SlicePrompt:
        """The prompt the model sees: the user's, plus a box around the existing mask when the
        user only clicked points on a slice that 3D propagation had already segmented."""
        o, z = self.obj(label), int(z)
        out = clean_prompt(prompt)
        had = o.seg.slices.get(z)
        if out.box is None and out and o.propagated and had is not None and had.area:
            if z in o.pins and "box" in o.seg.key_prompts.get(z, {}):
                out = out.replace(box=o.seg.key_prompts[z]["box"])
            elif z not in o.pins:
                out = out.replace(box=box_around(had.mask, margin=3))
        return out

    # ----------------------------------------------------------------- 3D jobs
    def segment3d_job(self, engine: Any, label: int | None = None) -> Job:
        """Propagate the object from every slice that has prompts."""
        o = self.obj(label)
        if not o.pins:
            raise ValueError(
                f"object {o.label} has no prompts: add a point or a box on a slice first"
            )
        work = o.copy()
        work.seg.key_prompts = {z: work.seg.key_prompts[z] for z in work.pins}
        steps = engine.propagator(work.pins).key_slices(work.seg)
        return Job("segment3d", o.label, None, work, steps)

    def correction_job(self, engine: Any, z: int, label: int | None = None) -> Job:
        """Re-propagate outward from slice ``z`` after its prompt changed."""
        o = self.obj(label)
        if z not in o.pins:
            raise ValueError(f"slice {z} has no prompt to re-propagate from")
        work = o.copy()
        steps = engine.propagator(work.pins).correct(work.seg, int(z))
        return Job("correct", o.label, int(z), work, steps)

    def finish_job(self, job: Job) -> None:
        """Accept a finished job's result (an undoable change)."""
        job.work.propagated = True
        touch(job.work, self.clock())

        def fn() -> None:
            self.objects = [job.work if o.label == job.label else o for o in self.objects]

        event = {"action": job.kind, "label": job.label}
        if job.z is not None:
            event["z"] = job.z
        self._do(job.kind, fn, event)
