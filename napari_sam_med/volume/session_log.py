"""The plugin's session log file, without a GUI: read and validate it.

A session log (``format: napari-sam-med-session``) lists every user action of a napari
session in order (see ``docs/plugin.md``). Prompts carry their slice ``z`` and SAM-order
coordinates (points ``[x, y]``, boxes ``[x0, y0, x1, y1]``, pixels of slice ``z``).

* :func:`load_session_log` / :func:`validate_session_log` check a log and name the file,
  the event and the offending value; the plugin, ``sam-med export`` and ``sam-med replay``
  all read logs through them.
* :func:`~.log_state.final_objects` (the one reducer) follows the events to the objects;
  :func:`~.log_replay.replay_objects` re-runs their prompts with any model.

Only the standard library and numpy are imported here, so reading a log is cheap.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .prompt import SlicePrompt

LOG_FORMAT = "napari-sam-med-session"
LOG_VERSION = 2  # 2: timing, brush edits, proposals, the prompt the model saw
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
        objects_ok = isinstance(objects, list) and all(
            isinstance(o, dict) and _is_int(o.get("label"), 1)
            and all(_is_int(o.get(k)) for k in keys)
            for o in objects
        )  # fmt: skip
        _require(objects_ok, where, "objects", "a list of {label, z, added, removed}", objects)


def _is_edit(e: Any) -> bool:
    rle = e.get("rle") if isinstance(e, dict) else None
    return (
        isinstance(rle, dict) and _is_int(e.get("z")) and _is_int(e.get("value"))
        and isinstance(rle.get("size"), list) and isinstance(rle.get("counts"), list)
        and all(map(_is_int, rle["counts"]))
    )  # fmt: skip


def check_prompt(prompt: Any, where: str) -> None:
    """Check one prompt (the JSON form of a :class:`~.prompt.SlicePrompt`)."""
    if not isinstance(prompt, dict):
        raise ValueError(f"{where} must be an object, got {prompt!r:.80}")
    SlicePrompt.from_json(prompt, where)


def labels_beside(log_path: str | os.PathLike) -> Path | None:
    """The labels file saved with a log (``X.session.json`` -> ``X.nii.gz``...), if any."""
    log_path = Path(log_path)
    base = log_path.name.removesuffix(".session.json")
    for suffix in LABEL_EXTS:
        p = log_path.with_name(base + suffix)
        if p.is_file():
            return p
    return None
