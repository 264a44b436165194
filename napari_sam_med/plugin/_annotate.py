"""Session changes of the data engine (no Qt): brush edits, accepted and rejected proposals,
and each object's entry in the session log (prompts, edits, time spent).

Functions of a :class:`~._session.Session` (this module is its companion): every change goes
through the session's ``_do``, so that it is undoable and logged like the others.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from ._state import LabelEdit, SessionObject, clean_prompt, color_for, touch

if TYPE_CHECKING:
    from ._session import Session


# --------------------------------------------------------------- brush edits
def record_paint(session: Session, index: np.ndarray, before: np.ndarray) -> LabelEdit | None:
    """Record voxels the user painted or erased in the labels (already changed there).

    Painted voxels join the object of their new value (an object is created for a label
    value that has none, so nothing painted is ever lost) and leave the object of their
    old value; those objects' masks change accordingly, so a later commit keeps the
    edit. The log event keeps the changed voxels (RLE per slice and value), so a replay
    of the session applies them again.

    Args:
        index: flat indices into the ``(Z, Y, X)`` labels.
        before: their values before the stroke (the first one wins for repeats).

    Returns:
        The edit (None when nothing changed).
    """
    from ..amg_utils import mask_to_rle

    index, first = np.unique(np.asarray(index, np.int64).ravel(), return_index=True)
    before = np.asarray(before).ravel()[first].astype(np.uint16)
    after = session.labels.flat[index].astype(np.uint16)
    keep = before != after
    index, before, after = index[keep], before[keep], after[keep]
    if not len(index):
        return None
    plane = session.shape[1] * session.shape[2]
    zs = index // plane
    known = session.labels_in_use()
    created = sorted({int(v) for v in np.unique(after)} - known - {0})
    edits, changes = [], []
    for z in np.unique(zs).tolist():
        on_z = zs == z
        for value in np.unique(after[on_z]).tolist():
            mask = np.zeros(plane, bool)
            mask[index[on_z & (after == value)] % plane] = True
            rle = mask_to_rle(mask.reshape(session.shape[1:]))
            edits.append({"z": int(z), "value": int(value), "rle": rle})
        for label in sorted({*after[on_z].tolist(), *before[on_z].tolist()} - {0}):
            added = int((after[on_z] == label).sum())
            removed = int(((before[on_z] == label) & (after[on_z] != label)).sum())
            changes.append({"label": label, "z": int(z), "added": added, "removed": removed})

    def fn() -> LabelEdit:
        for label in created:
            obj = SessionObject(_new_seg(label, f"painted {label}"), color_for(label))
            obj.source, obj.committed, obj.propagated = "painted", True, True
            session.objects.append(obj)
        objects = {o.label: o for o in session.objects}
        for c in changes:
            if c["label"] in objects:
                _apply_edit(session, objects[c["label"]], c, index, after)
        session.labels.flat[index] = after  # napari changed them already; a replay has not
        return LabelEdit(index, before, after)

    event = {"action": "paint", "edits": edits, "objects": changes, "created": created}
    session._do("paint", fn, event)
    return session.history.last.edit


def _apply_edit(
    session: Session, o: SessionObject, change: dict[str, int], index: np.ndarray, after: np.ndarray
) -> None:
    """Make slice ``change["z"]`` of ``o`` follow the painted voxels of its label."""
    from ..volume.slices import SlicePrediction

    z, plane = change["z"], session.shape[1] * session.shape[2]
    on_z = index // plane == z
    old = o.seg.slices.get(z)
    mask = np.zeros(session.shape[1:], bool) if old is None else old.mask.copy()
    flat = mask.reshape(-1)
    flat[index[on_z] % plane] = after[on_z] == o.label
    if old is None:
        pred = SlicePrediction(z, mask, np.zeros((1, 1), np.float32), 1.0, 1.0, "painted")
    else:
        pred = copy.copy(old)  # predictions are shared by undo snapshots: never mutate
        pred.mask, pred.source = mask, "painted"
    if mask.any():
        o.seg.slices[z] = pred
    else:
        o.seg.slices.pop(z, None)
    if z in o.pins:
        o.pins[z] = pred  # a re-propagation starts from the edited mask
    d = o.edits.setdefault(z, {"added": 0, "removed": 0})
    d["added"] += change["added"]
    d["removed"] += change["removed"]
    touch(o, session.clock())


# ----------------------------------------------------------------- proposals
def accept_proposal(session: Session, proposal: Any, seconds: float | None = None) -> SessionObject:
    """Make an automatic proposal a committed object (one undoable change).

    Args:
        proposal: a ``_proposals.Proposal`` (its slice prediction, prompt, 3D slices).
        seconds: how long the user looked at it before accepting (logged).
    """
    used = session.labels_in_use() | set(np.unique(session.labels).tolist()) - {0}
    label = next(i for i in range(1, len(used) + 2) if i not in used)
    obj = SessionObject(_new_seg(label, f"proposal {label}"), color_for(label))
    obj.source, z = "proposal", proposal.z
    obj.prompts[z] = obj.seg.key_prompts[z] = clean_prompt(proposal.prompt)
    obj.pins[z] = proposal.pred
    if proposal.slices:
        obj.seg.slices, obj.propagated = dict(proposal.slices), True
    elif proposal.pred.area:
        obj.seg.slices = {z: proposal.pred}
    event = {"action": "accept_proposal", "label": label, "name": obj.name,
             "color": list(obj.color), **proposal.describe(), "seconds": seconds}  # fmt: skip

    def fn() -> LabelEdit:
        session.objects.append(obj)
        session.current = label
        touch(obj, session.clock())
        return session._commit_voxels(obj)

    session._do("accept proposal", fn, event)
    return obj


def reject_proposal(session: Session, proposal: Any, seconds: float | None = None) -> None:
    """Keep a rejected proposal in the log as a negative (its mask as RLE; not undoable)."""
    from ..amg_utils import mask_to_rle

    event = {"action": "reject_proposal", **proposal.describe(), "seconds": seconds,
             "rle": mask_to_rle(proposal.pred.mask), "t": session.elapsed()}  # fmt: skip
    session.events.append(event)


# ---------------------------------------------------------------------- log
def log_summary(session: Session, label: int) -> dict[str, Any]:
    """An object's entry in the session log: its summary, prompts, edits, time spent."""
    o = session.obj(label)
    out = session.summary(label)
    out.update(
        source=o.source,
        prompts={str(z): p.to_json() for z, p in sorted(o.prompts.items())},
        edits={str(z): e for z, e in sorted(o.edits.items())},
        time=o.time_spent(),
    )
    return out


def _new_seg(label: int, name: str) -> Any:
    from ..volume.objects import ObjectSegmentation

    return ObjectSegmentation(int(label), name)
