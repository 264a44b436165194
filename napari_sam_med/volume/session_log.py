"""The plugin's session log, without a GUI: read and validate it, and replay it on a model.

A session log (``format: napari-sam-med-session``) lists every user action of a napari
session in order (see ``docs/plugin.md``). Prompts carry their slice ``z`` and SAM-order
coordinates (points ``[x, y]``, boxes ``[x0, y0, x1, y1]``, pixels of slice ``z``).

* :func:`load_session_log` / :func:`validate_session_log` check a log and name the file,
  the event and the offending value; the plugin, ``sam-med export`` and ``sam-med replay``
  all read logs through them.
* :func:`final_objects` follows the events (with undo and redo) to each object's final
  prompts, candidate choices and 3D state.
* :func:`replay_objects` re-runs those prompts with any model (a generator yielding
  :class:`ReplayProgress`), so that a fine-tuned checkpoint can be compared with the
  annotation: :func:`compare_labels` gives the per-object Dice.

Only the standard library and numpy are imported here (torch on demand), so reading a log
is cheap. Replay is model-only: the brush edits recorded in the log are not applied, so the Dice
measures how close the model gets from the same prompts to the (refined) annotation.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import dice

LOG_FORMAT = "napari-sam-med-session"
LOG_VERSION = 2  # 2: timing, brush edits, proposals, the prompt the model saw
MAX_UNDO = 30  # undo levels of a session (the plugin and the replay share it)
LABEL_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha")
_NO_LABEL = {"undo", "redo", "reject_proposal", "paint"}
_NEEDS_Z = {"prompt", "candidate", "correct", "accept_proposal", "reject_proposal"}
ACTIONS = frozenset(
    {"new_object", "prompt", "candidate", "segment3d", "correct", "commit", "delete",
     "relabel", "rename", "color", "undo", "redo", "paint", "accept_proposal",
     "reject_proposal"}
)  # fmt: skip


# ------------------------------------------------------------------ reading
def load_session_log(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a session log file.

    Raises:
        ValueError: naming the file, when it is unreadable, not JSON, or not a valid log.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the session log ({exc})") from exc
    return validate_session_log(data, str(path))


def validate_session_log(data: Any, source: str = "session log") -> dict[str, Any]:
    """Check the structure of a session log (format, version, objects, every event).

    Returns:
        ``data`` itself.

    Raises:
        ValueError: ``"<source>: event 3 (prompt): 'z' must be ..."`` style messages.
    """
    if not isinstance(data, dict) or data.get("format") != LOG_FORMAT:
        raise ValueError(f"{source}: not a napari-sam-med session log (format {LOG_FORMAT!r})")
    version = data.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= LOG_VERSION:
        raise ValueError(
            f"{source}: session log version {version!r}; this napari-sam-med reads versions "
            f"1..{LOG_VERSION} (update napari-sam-med for newer logs)"
        )
    if not isinstance(data.get("events"), list):
        raise ValueError(f"{source}: the session log has no 'events' list")
    for key in ("image", "model"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{source}: '{key}' must be an object, got {data[key]!r}")
    objects = data.get("objects", [])
    if not isinstance(objects, list) or not all(
        isinstance(o, dict) and _is_int(o.get("label"), 1) for o in objects
    ):
        raise ValueError(f"{source}: 'objects' must be a list of objects with a label >= 1")
    for i, ev in enumerate(data["events"]):
        _check_event(ev, f"{source}: event {i}")
    return data


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _nums(v: Any, n: tuple[int, ...]) -> bool:
    return isinstance(v, list) and len(v) in n and all(map(_is_num, v))


def _require(ok: bool, where: str, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{where}: '{key}' must be {what}, got {value!r:.80}")


_FIELDS = {  # action -> (key, check, description)
    "candidate": ("index", _is_int, "an integer >= 0"),
    "relabel": ("new_label", lambda v: _is_int(v, 1), "an integer >= 1"),
    "rename": ("name", lambda v: isinstance(v, str), "a string"),
}


def _check_event(ev: Any, where: str) -> None:
    if not isinstance(ev, dict) or not isinstance(ev.get("action"), str):
        raise ValueError(f"{where}: expected an object with an 'action', got {ev!r:.80}")
    action = ev["action"]
    where = f"{where} ({action})"
    if action not in ACTIONS:
        raise ValueError(f"{where}: unknown action; expected one of {sorted(ACTIONS)}")
    if action not in _NO_LABEL:
        _require(_is_int(ev.get("label"), 1), where, "label", "an integer >= 1", ev.get("label"))
    if action in _NEEDS_Z:
        _require(_is_int(ev.get("z")), where, "z", "a slice index >= 0", ev.get("z"))
    for key in ("prompt", "model_prompt"):
        if key in ev or (key == "prompt" and action in ("prompt", "accept_proposal")):
            check_prompt(ev.get(key), f"{where}: '{key}'")
    if action in _FIELDS:
        key, ok, what = _FIELDS[action]
        _require(ok(ev.get(key)), where, key, what, ev.get(key))
    if "color" in ev:
        _require(_nums(ev["color"], (3, 4)), where, "color", "3 or 4 numbers", ev["color"])
    if action == "paint":
        edits, objects = ev.get("edits"), ev.get("objects", [])
        _require(isinstance(edits, list) and all(map(_is_edit, edits)), where, "edits",
                 "a list of {z, value, rle}", edits)  # fmt: skip
        keys = ("z", "added", "removed")
        ok = isinstance(objects, list) and all(
            isinstance(o, dict) and _is_int(o.get("label"), 1)
            and all(_is_int(o.get(k)) for k in keys)
            for o in objects
        )  # fmt: skip
        _require(ok, where, "objects", "a list of {label, z, added, removed}", objects)


def _is_edit(e: Any) -> bool:
    rle = e.get("rle") if isinstance(e, dict) else None
    return (
        isinstance(rle, dict) and _is_int(e.get("z")) and _is_int(e.get("value"))
        and isinstance(rle.get("size"), list) and isinstance(rle.get("counts"), list)
        and all(map(_is_int, rle["counts"]))
    )  # fmt: skip


def check_prompt(prompt: Any, where: str) -> None:
    """Check one prompt ``{"points": [[x, y]...], "point_labels": [...], "box": [4], "text"}``."""
    if not isinstance(prompt, dict):
        raise ValueError(f"{where} must be an object, got {prompt!r:.80}")
    pts, labels = prompt.get("points"), prompt.get("point_labels")
    if pts is not None:
        ok = isinstance(pts, list) and all(_nums(p, (2,)) for p in pts)
        _require(ok, where, "points", "a list of [x, y] numbers", pts)
        ok = isinstance(labels, list) and len(labels) == len(pts)
        ok = ok and all(v in (0, 1) and not isinstance(v, bool) for v in labels)
        _require(ok, where, "point_labels", "one 0 or 1 per point", labels)
    if prompt.get("box") is not None:
        _require(_nums(prompt["box"], (4,)), where, "box", "[x0, y0, x1, y1]", prompt["box"])
    if "text" in prompt:
        ok = isinstance(prompt["text"], str) and bool(prompt["text"].strip())
        _require(ok, where, "text", "a non-empty string", prompt["text"])


def labels_beside(log_path: str | os.PathLike) -> Path | None:
    """The labels file saved with a log (``X.session.json`` -> ``X.nii.gz``...), if any."""
    log_path = Path(log_path)
    base = log_path.name.removesuffix(".session.json")
    for suffix in LABEL_EXTS:
        p = log_path.with_name(base + suffix)
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------- final state
@dataclass
class ObjectRecord:
    """One object's final state in a log.

    Attributes:
        prompts: z -> the user's prompt; model_prompts: z -> the prompt the model saw (the
            user's plus a context box, when logged; version-1 logs: the user's).
        candidates: z -> the ambiguity candidate the user chose (absent: the default).
        edits: z -> ``{"added": n, "removed": n}`` voxels changed with the brush/eraser.
    """

    label: int
    name: str = ""
    color: list[float] | None = None
    prompts: dict[int, dict[str, Any]] = field(default_factory=dict)
    model_prompts: dict[int, dict[str, Any]] = field(default_factory=dict)
    candidates: dict[int, int] = field(default_factory=dict)
    propagated: bool = False
    committed: bool = False
    edits: dict[int, dict[str, int]] = field(default_factory=dict)
    source: str = "prompts"


@dataclass
class LogState:
    """Objects by label, and the committed labels in the order of their last commit."""

    objects: dict[int, ObjectRecord] = field(default_factory=dict)
    commit_order: list[int] = field(default_factory=list)


def final_objects(log: dict[str, Any]) -> LogState:
    """Follow the events of a (validated) log, with undo and redo, to the final objects."""
    state, undo, redo = LogState(), [], []
    for ev in log["events"]:
        action = ev["action"]
        if action in ("undo", "redo"):
            src, dst = (undo, redo) if action == "undo" else (redo, undo)
            if src:
                dst.append(copy.deepcopy(state))
                state = src.pop()
            continue
        if action == "reject_proposal":
            continue
        undo.append(copy.deepcopy(state))
        del undo[:-MAX_UNDO]
        redo.clear()
        _apply(state, ev)
    return state


def _apply(state: LogState, ev: dict[str, Any]) -> None:
    action, objs = ev["action"], state.objects
    if action == "paint":
        _apply_paint(state, ev)
        return
    label = int(ev["label"])
    if action in ("new_object", "accept_proposal"):
        objs[label] = ObjectRecord(label, ev.get("name") or f"object {label}", ev.get("color"))
    o = objs.get(label)
    if o is None:
        return  # an action on an object the log never created (a restored session)
    z = int(ev.get("z", -1))
    if action in ("prompt", "accept_proposal"):
        o.candidates.pop(z, None)
        if ev["prompt"]:
            o.prompts[z], o.model_prompts[z] = ev["prompt"], ev.get("model_prompt", ev["prompt"])
        else:
            o.prompts.pop(z, None)
            o.model_prompts.pop(z, None)
        if action == "accept_proposal":
            o.source, o.propagated = "proposal", bool(ev.get("propagated"))
            action = "commit"
    if action == "candidate":
        o.candidates[z] = int(ev["index"])
    elif action in ("segment3d", "correct"):
        o.propagated = True
    elif action == "commit":
        o.committed = True
        state.commit_order = [v for v in state.commit_order if v != label] + [label]
    elif action == "delete":
        del objs[label]
        state.commit_order = [v for v in state.commit_order if v != label]
    elif action == "relabel":
        new = int(ev["new_label"])
        o.label = new
        objs[new] = objs.pop(label)
        state.commit_order = [new if v == label else v for v in state.commit_order]
    elif action == "rename":
        o.name = ev["name"]
    elif action == "color":
        o.color = ev["color"]


def _apply_paint(state: LogState, ev: dict[str, Any]) -> None:
    for label in ev.get("created", []):
        state.objects[int(label)] = ObjectRecord(int(label), f"painted {label}", source="painted")
        state.objects[int(label)].committed = True
        state.commit_order.append(int(label))
    for change in ev.get("objects", []):
        o = state.objects.get(int(change["label"]))
        if o is not None:
            d = o.edits.setdefault(int(change["z"]), {"added": 0, "removed": 0})
            d["added"] += int(change["added"])
            d["removed"] += int(change["removed"])


# -------------------------------------------------------------------- replay
Candidates = tuple[list[Any], list[str], int]


def prompt_arrays(
    prompt: dict[str, Any], slice_shape: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """``(box (4,), points (N, 2), labels (N,))`` from a prompt, clipped to the slice.

    Clicks that fall just outside the image (on its border) are moved onto it, so that a
    click never fails because of a fraction of a pixel.
    """
    h, w = slice_shape
    box = pts = lab = None
    if prompt.get("box"):
        b = np.asarray(prompt["box"], np.float32).ravel()
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        box = np.clip(b, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)
    if prompt.get("points"):
        pts = np.clip(np.asarray(prompt["points"], np.float32).reshape(-1, 2), 0, [w - 1, h - 1])
        lab = np.asarray(prompt["point_labels"], np.int64).ravel()
    return box, pts, lab


def candidate_steps(segmenter: Any, z: int, prompt: dict[str, Any]) -> Iterator[Candidates]:
    """The ambiguity candidates of one prompt: yields ``(predictions, names, chosen)``.

    A single point (or text alone) keeps SAM's advice (the candidate of highest predicted
    IoU, one decoder pass): one yield. A box or several points yield the single-mask
    output (``"auto"``) at once, then the three ambiguity masks followed by ``"auto"``,
    which stays chosen.
    ``segmenter`` is a ``SliceSegmenter`` (or anything with its ``predict``/``slice_shape``).
    """
    from .slices import choose_candidate

    box, pts, lab = prompt_arrays(prompt, segmenter.slice_shape)
    text = prompt.get("text") or None
    if box is None and pts is None and text is None:
        raise ValueError(f"slice {z}: the prompt has no points, no box and no text")
    args = {"box": box, "points": pts, "labels": lab, "source": "prompt"}
    if text is not None:  # only models trained with text accept it (a clear ValueError else)
        args["text"] = text
    single = None
    if box is not None or (pts is not None and len(pts) > 1):
        single = segmenter.predict(z, multimask=False, **args)
        yield [single], ["auto"], 0
    multi = segmenter.predict(z, multimask=True, **args)
    ious = multi.prompt["candidates"]["ious"]
    preds = [choose_candidate(multi, i) for i in range(len(ious))]
    names = [str(i + 1) for i in range(len(preds))]
    if single is None:
        yield preds, names, int(np.argmax(ious))
    else:
        yield [*preds, single], [*names, "auto"], len(preds)


def pinned_propagator(segmenter: Any, pins: dict[int, Any]) -> Any:
    """A ``Propagator`` whose key slices keep ``pins`` (z -> the mask the user accepted)."""
    from .propagate import Propagator

    class _Pinned(Propagator):
        """Key slices keep the prediction shown to the user instead of re-predicting."""

        def _predict_key(self, obj, z, clip, correction=False):
            if z in pins:
                pred = copy.copy(pins[z])
                pred.mask = pred.mask.copy()
                return self._clip(pred, clip)
            return super()._predict_key(obj, z, clip, correction)

    return _Pinned(segmenter)


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

    objects: dict[int, Any]  # label -> ObjectSegmentation
    labels: np.ndarray
    skipped: dict[int, str]


def replay_objects(state: LogState, segmenter: Any) -> Iterator[ReplayProgress]:
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
    from .objects import ObjectSegmentation, compose_labels

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
        seg.key_prompts = copy.deepcopy(o.model_prompts)
        if o.propagated:
            for p in pinned_propagator(segmenter, pins).key_slices(seg):
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


__all__ = [
    "LOG_FORMAT", "LOG_VERSION", "LogState", "ObjectRecord", "ReplayProgress", "ReplayResult",
    "candidate_steps", "check_prompt", "compare_labels", "final_objects", "labels_beside",
    "load_session_log", "pinned_propagator", "prompt_arrays", "replay_objects",
    "validate_session_log",
]  # fmt: skip
