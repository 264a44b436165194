"""The one reducer of a session log: events in, objects out, with the one undo/redo rule.

:class:`History` holds the undoable changes of a session (at most :data:`MAX_UNDO` levels);
the plugin's live session keeps its changes in one, and :func:`final_objects` follows a log's
events through another, so that undo and redo mean the same in both. :func:`final_objects`
turns a (validated) log into each object's final prompts, candidate choices and 3D state
(:class:`LogState`): what ``sam-med replay``, the plugin's "Compare" and the plugin's
restore of an autosave read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .prompt import SlicePrompt, coerce

MAX_UNDO = 30  # undo levels of a session (the plugin and the replay share it)
T = TypeVar("T")


class History(Generic[T]):
    """Undo and redo stacks of changes (any record of a change: its states before and after).

    A new change empties the redo stack; only the last ``limit`` changes can be undone.
    """

    def __init__(self, limit: int = MAX_UNDO) -> None:
        self.limit = limit
        self.undo_stack: list[T] = []
        self.redo_stack: list[T] = []

    def record(self, change: T) -> None:
        """A new change (it can be undone; nothing can be redone any more)."""
        self.undo_stack.append(change)
        del self.undo_stack[: -self.limit]
        self.redo_stack.clear()

    def undo(self) -> T | None:
        """The change to undo (moved to the redo stack), or None."""
        return _move(self.undo_stack, self.redo_stack)

    def redo(self) -> T | None:
        """The change to redo (moved back to the undo stack), or None."""
        return _move(self.redo_stack, self.undo_stack)

    @property
    def last(self) -> T:
        """The last change done."""
        return self.undo_stack[-1]


def _move(src: list[T], dst: list[T]) -> T | None:
    if not src:
        return None
    change = src.pop()
    dst.append(change)
    return change


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
    prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    model_prompts: dict[int, SlicePrompt] = field(default_factory=dict)
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
    state = LogState()
    history: History[tuple[LogState, LogState]] = History()
    for ev in log["events"]:
        action = ev["action"]
        if action in ("undo", "redo"):
            change = history.undo() if action == "undo" else history.redo()
            if change is not None:
                state = copy.deepcopy(change[0] if action == "undo" else change[1])
            continue
        if action == "reject_proposal":
            continue
        before = copy.deepcopy(state)
        apply_event(state, ev)
        history.record((before, copy.deepcopy(state)))
    return state


def apply_event(state: LogState, ev: dict[str, Any]) -> None:
    """Apply one (validated, undoable) event to ``state``."""
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
        _apply_prompt(o, z, ev)
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


def _apply_prompt(o: ObjectRecord, z: int, ev: dict[str, Any]) -> None:
    o.candidates.pop(z, None)
    prompt = coerce(ev["prompt"])
    if prompt:
        o.prompts[z], o.model_prompts[z] = prompt, coerce(ev.get("model_prompt", prompt))
    else:
        o.prompts.pop(z, None)
        o.model_prompts.pop(z, None)


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
