"""Saving a session: the JSON session log, its replay, and autosave of committed labels.

The log (``format: napari-sam-med-session``) lists every user action in order; prompts carry
their slice, their SAM-order coordinates (points ``(x, y)``, boxes ``[x0, y0, x1, y1]``,
pixels of the slice), the model and the intensity preset; brush edits carry the painted
voxels; objects carry their prompts, edited slices and time spent. Reading and validating a
log is ``napari_sam_med.volume.session_log``'s job (shared with ``sam-med export`` and
``sam-med replay``). :func:`replay` runs the actions again through a fresh
:class:`~._session.Session` with any model, so the masks can be regenerated with another
checkpoint (the widget's "Replay log"; "Compare" uses ``log_replay.replay_objects``). Its
undo and redo follow the one rule of ``volume.log_state.History``, as the log's reducer does.

Autosave writes the committed labels and the log into
``<cache folder>/autosave/<image content hash>/`` after every change of the labels map
(atomically), so that a crash loses nothing; :func:`find_autosave` finds it when the same
image is opened again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import replace_atomic
from ..volume.log_state import final_objects
from ..volume.prompt import coerce
from ..volume.session_log import LOG_FORMAT, LOG_VERSION, load_session_log
from ._annotate import accept_proposal, log_summary, record_paint, reject_proposal
from ._session import Session

logger = logging.getLogger(__name__)


def session_log(session: Session) -> dict[str, Any]:
    """The JSON-friendly session log."""
    return {
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "image": session.image_info,
        "model": session.model_info,
        "preset": session.preset,
        "coordinates": "prompts in SAM order: points [x, y], boxes [x0, y0, x1, y1], pixels "
        "of slice z (array index along axis 0 of the (z, y, x) volume)",
        "objects": [log_summary(session, o.label) for o in session.objects],
        "events": session.events,
    }


def _atomic_write(path: Path, write: Callable[[Any], None], binary: bool) -> Path:
    return replace_atomic(path, write, binary)


def save_log(session: Session, path: str | os.PathLike) -> Path:
    """Write the session log as JSON (atomically)."""
    data = session_log(session)
    return _atomic_write(Path(path), lambda fh: json.dump(data, fh, indent=1), binary=False)


def load_log(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a session log (``session_log.load_session_log``).

    Raises:
        ValueError: naming the file, the event and the offending value.
    """
    return load_session_log(path)


def replay(
    log: dict[str, Any],
    engine: Any,
    session: Session | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Session:
    """Run a session log again with ``engine`` (any model) and return the new session.

    Args:
        log: from :func:`load_log` or :func:`session_log`.
        engine: an ``_engine.Engine`` on the same image.
        session: the session to replay into (a fresh one on the engine's grid when None).
        progress: called with ``(done, total)`` after every event.
    """
    if session is None:
        info = log.get("image", {})
        session = Session(_engine_shape(engine), info.get("spacing_xyz"), info)
    session.model_info, session.preset = dict(engine.model_info), engine.preset
    events = log["events"]
    for i, ev in enumerate(events):
        _replay_event(session, engine, ev)
        if progress is not None:
            progress(i + 1, len(events))
    return session


def _engine_shape(engine: Any) -> tuple[int, int, int]:
    return (engine.num_slices, *engine.segmenter.slice_shape)


def _replay_event(session: Session, engine: Any, ev: dict[str, Any]) -> None:
    action, label = ev.get("action"), ev.get("label")
    if action == "new_object":
        session.new_object(ev.get("name"), label, ev.get("color"))
    elif action == "prompt":
        z, prompt = int(ev["z"]), ev.get("prompt") or {}
        preview = engine.preview(z, session.model_prompt(label, z, prompt)) if prompt else None
        session.set_prompt(label, z, prompt, preview)
    elif action == "candidate":
        if session.last_preview is not None:
            session.cycle_candidate(int(ev["index"]) - session.last_preview[1].index)
    elif action in ("segment3d", "correct"):
        job = (
            session.segment3d_job(engine, label)
            if action == "segment3d"
            else session.correction_job(engine, int(ev["z"]), label)
        )
        for _ in job.steps:
            pass
        session.finish_job(job)
    elif action == "commit":
        session.commit(label)
    elif action == "paint":
        _replay_paint(session, ev)
    elif action in ("accept_proposal", "reject_proposal"):
        _replay_proposal(session, engine, ev)
    elif action == "delete":
        session.delete_object(label)
    elif action == "relabel":
        session.relabel(label, ev["new_label"])
    elif action == "rename":
        session.rename(label, ev["name"])
    elif action == "color":
        session.set_color(label, ev["color"])
    elif action == "undo":
        session.undo()
    elif action == "redo":
        session.redo()
    else:
        raise ValueError(f"unknown action {action!r} in the session log")


def _replay_paint(session: Session, ev: dict[str, Any]) -> None:
    from ..amg_utils import rle_to_mask

    plane = session.shape[1] * session.shape[2]
    index, values = [], []
    for e in ev["edits"]:
        mask = rle_to_mask(e["rle"])
        if mask.shape != session.shape[1:] or not 0 <= e["z"] < session.shape[0]:
            raise ValueError(f"a brush edit on slice {e['z']} does not fit the image")
        flat = np.flatnonzero(mask.ravel()) + e["z"] * plane
        index.append(flat)
        values.append(np.full(len(flat), e["value"], np.uint16))
    if index:
        index_a = np.concatenate(index)
        before = session.labels.flat[index_a].copy()
        session.labels.flat[index_a] = np.concatenate(values)
        record_paint(session, index_a, before)


def _replay_proposal(session: Session, engine: Any, ev: dict[str, Any]) -> None:
    from ._proposals import Proposal

    z, prompt = int(ev["z"]), coerce(ev.get("prompt"))
    pred = engine.preview(z, prompt).chosen
    prop = Proposal(z, pred, prompt)
    if ev["action"] == "reject_proposal":
        reject_proposal(session, prop, ev.get("seconds"))
        return
    if ev.get("propagated"):
        from ..volume.objects import ObjectSegmentation

        obj = ObjectSegmentation(1, "proposal")
        obj.key_prompts = {z: prompt}
        for _ in engine.propagator({z: pred}).key_slices(obj):
            pass
        prop.slices = dict(obj.slices)
    accept_proposal(session, prop, ev.get("seconds"))


# ------------------------------------------------------------------- autosave


def autosave_dir(cache_dir: str | os.PathLike, image_hash: str) -> Path:
    """The autosave folder of one image."""
    return Path(cache_dir) / "autosave" / image_hash


def autosave(
    cache_dir: str | os.PathLike, image_hash: str, labels: np.ndarray, log: dict[str, Any]
) -> Path:
    """Write committed ``labels`` and a session ``log`` (atomically); returns the folder.

    Takes copies rather than the session so that it can run in a worker thread.
    """
    folder = autosave_dir(cache_dir, image_hash)
    _atomic_write(folder / "labels.npz", lambda fh: np.savez_compressed(fh, labels=labels), True)
    _atomic_write(folder / "session.json", lambda fh: json.dump(log, fh), binary=False)
    return folder


def find_autosave(cache_dir: str | os.PathLike, image_hash: str) -> dict[str, Any] | None:
    """The autosave of an image as ``{"labels", "log", "folder", "saved"}`` (None if absent or
    unreadable, or when it holds no labelled voxel)."""
    folder = autosave_dir(cache_dir, image_hash)
    try:
        with np.load(folder / "labels.npz", allow_pickle=False) as data:
            labels = data["labels"]
        log = load_log(folder / "session.json")
    except (OSError, ValueError, KeyError) as exc:
        if folder.exists():
            logger.warning("ignoring unreadable autosave in %s: %s", folder, exc)
        return None
    if not labels.any():
        return None
    return {"labels": labels, "log": log, "folder": folder, "saved": log.get("saved", "")}


def restore(session: Session, saved: dict[str, Any]) -> None:
    """Load autosaved committed labels into ``session`` as committed objects.

    Each label value becomes an object whose slices are read back from the labels; its name
    and colour are those the log's events leave it with (``log_state.final_objects``, the
    reducer ``sam-med replay`` uses too), else those of the log's object list. Prompts are
    not restored.
    """
    from ..volume.slices import SlicePrediction

    labels = np.asarray(saved["labels"])
    if labels.shape != session.labels.shape:
        raise ValueError(
            f"autosaved labels in {saved.get('folder')} have shape {labels.shape}, but the "
            f"image has {session.labels.shape}; they belong to another image"
        )
    meta = {int(o["label"]): o for o in saved["log"].get("objects", [])}
    final = final_objects(saved["log"]).objects
    for value in sorted(int(v) for v in np.unique(labels) if v):
        info = meta.get(value, {})
        rec = final.get(value)
        name = rec.name if rec is not None else info.get("name")
        color = rec.color if rec is not None and rec.color is not None else info.get("color")
        obj = session.new_object(name, value, color)
        obj.source = "restored"
        for z in np.flatnonzero((labels == value).any(axis=(1, 2))):
            mask = labels[z] == value
            obj.seg.slices[int(z)] = SlicePrediction(
                int(z), mask, np.zeros((1, 1), np.float32), 1.0, 1.0, "restored"
            )
        obj.propagated = True
        session.commit(value)
