"""Replay of a session log on a model: the logged prompts re-run, and the Dice to the log.

:func:`replay_objects` re-runs the final prompts of a log (:func:`.log_state.final_objects`)
with any model (a generator yielding :class:`ReplayProgress`), so that a fine-tuned
checkpoint can be compared with the annotation: :func:`compare_labels` gives the per-object
Dice. Each prompted slice offers the candidates the plugin offered
(:func:`.candidates.candidate_steps`) and keeps the one the user chose; propagated objects
are propagated again with those masks pinned on their key slices.

Replay is model-only: the brush edits recorded in the log are not applied, so the Dice
measures how close the model gets from the same prompts to the (refined) annotation.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import dice
from .candidates import candidate_steps
from .log_state import LogState
from .objects import ObjectSegmentation, compose_labels
from .propagate import Propagator, pinned
from .slices import SliceSegmenter


@dataclass
class ReplayProgress:
    """``done`` prompted slices of ``total``; ``z`` of object ``label``; 3D steps too."""

    done: int
    total: int
    label: int
    z: int
    message: str = ""


@dataclass
class ReplayResult:
    """Replayed objects (committed ones, by label), their label map and what was skipped."""

    objects: dict[int, ObjectSegmentation]  # by label
    labels: np.ndarray
    skipped: dict[int, str]


def replay_objects(
    state: LogState, segmenter: SliceSegmenter
) -> Generator[ReplayProgress, None, ReplayResult]:
    """Re-segment every committed object of a log from its final prompts with ``segmenter``.

    Each prompted slice gets the logged candidate (the default one when the log has none,
    or when the new model offers fewer); objects that were propagated in 3D are propagated
    again from all their prompted slices (key-slice mode). Objects are composed into labels
    in the order of their last commit, without overwriting, as the plugin commits them.

    Yields:
        :class:`ReplayProgress` after every prompted slice and every propagated slice.

    Returns:
        A :class:`ReplayResult` (``(Z, Y, X)`` uint16 labels).
    """
    shape = (segmenter.num_slices, *segmenter.slice_shape)
    todo = [state.objects[v] for v in state.commit_order if v in state.objects]
    total = sum(len(o.model_prompts) for o in todo)
    done, out, skipped = 0, {}, {}
    for o in todo:
        if not o.model_prompts:
            skipped[o.label] = f"no prompts ({o.source})"
            continue
        seg, pins = ObjectSegmentation(o.label, o.name), {}
        for z in sorted(o.model_prompts):
            segmenter.check_index(z)
            *_, (preds, _names, index) = candidate_steps(segmenter, z, o.model_prompts[z])
            pins[z] = preds[
                o.candidates.get(z, index) if o.candidates.get(z, -1) < len(preds) else index
            ]
            done += 1
            yield ReplayProgress(done, total, o.label, z, "prompted slice")
        seg.key_prompts = dict(o.model_prompts)
        if o.propagated:
            for p in Propagator(segmenter, key_predictor=pinned(pins)).key_slices(seg):
                yield ReplayProgress(done, total, o.label, p.z, f"3D: {p.message}")
        else:
            seg.slices = {z: p for z, p in pins.items() if p.area > 0}
        out[o.label] = seg
    labels = compose_labels([out[v] for v in state.commit_order if v in out], shape)
    return ReplayResult(out, labels, skipped)


def compare_labels(
    state: LogState, logged: np.ndarray, replayed: ReplayResult
) -> list[dict[str, Any]]:
    """Per committed object: voxels in the logged and replayed labels and their Dice.

    Args:
        logged: the ``(Z, Y, X)`` labels saved with the log (same grid as the replay).

    Returns:
        Rows ``{label, name, source, prompted_slices, edited_slices, propagated,
        logged_voxels, replayed_voxels, dice}``; ``dice`` is None when the object was
        skipped or both masks are empty.
    """
    if tuple(logged.shape) != tuple(replayed.labels.shape):
        raise ValueError(
            f"the logged labels have shape {tuple(logged.shape)} (z, y, x) but the image "
            f"{tuple(replayed.labels.shape)}; they belong to another image"
        )
    rows = []
    for label in state.commit_order:
        o = state.objects.get(label)
        if o is None:
            continue
        old, new = logged == label, replayed.labels == label
        n_old, n_new = int(old.sum()), int(new.sum())
        both = n_old + n_new
        ok = label in replayed.objects and both > 0
        rows.append({
            "label": label, "name": o.name, "source": o.source,
            "prompted_slices": len(o.prompts), "edited_slices": len(o.edits),
            "propagated": o.propagated, "logged_voxels": n_old, "replayed_voxels": n_new,
            "dice": round(dice(old, new), 4) if ok else None,
        })  # fmt: skip
    return rows
