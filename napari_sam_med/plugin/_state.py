"""Plain data of the plugin's state (no Qt): objects, label edits, history actions, jobs.

Prompts are in SAM order: points ``(x, y)`` and boxes ``[x0, y0, x1, y1]`` in pixels of
one slice.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..volume.prompt import SlicePrompt, coerce

# Distinct, colour-blind-friendly colours (Okabe-Ito), RGBA in 0..1, by label value.
PALETTE = [
    (0.90, 0.62, 0.00, 1.0),
    (0.34, 0.71, 0.91, 1.0),
    (0.00, 0.62, 0.45, 1.0),
    (0.94, 0.89, 0.26, 1.0),
    (0.00, 0.45, 0.70, 1.0),
    (0.84, 0.37, 0.00, 1.0),
    (0.80, 0.47, 0.65, 1.0),
]
ACTIVE_GAP_S = 30.0  # a pause longer than this between interactions counts as idle


def color_for(label: int) -> tuple[float, float, float, float]:
    """The default colour of a label value."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


@dataclass
class SessionObject:
    """One object: its user prompts, accepted key-slice results and 3D segmentation.

    Attributes:
        seg: the engine's ``ObjectSegmentation`` (label, name, slices, key_prompts).
        color: RGBA in 0..1.
        prompts: z -> the user's :class:`SlicePrompt` on that slice.
        pins: z -> the ``SlicePrediction`` the user accepted on a prompted slice.
        propagated: whether "Segment 3D" has run (new prompts then re-propagate).
        committed: whether the object is in the labels map.
        edits: z -> ``{"added": n, "removed": n}`` voxels changed with napari's brush/eraser.
        timing: ``first``/``last`` interaction (session clock, s), ``active`` seconds and
            the number of ``interactions``; see :func:`touch`.
        source: ``"prompts"``, ``"proposal"`` (an accepted automatic proposal), ``"painted"``
            (a label value painted without an object) or ``"restored"``.
    """

    seg: Any
    color: tuple[float, float, float, float]
    prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    pins: dict[int, Any] = field(default_factory=dict)
    propagated: bool = False
    committed: bool = False
    edits: dict[int, dict[str, int]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    source: str = "prompts"

    @property
    def label(self) -> int:
        return int(self.seg.label)

    @property
    def name(self) -> str:
        return str(self.seg.name)

    def copy(self) -> SessionObject:
        """A copy sharing the (immutable) slice predictions."""
        seg = copy.copy(self.seg)
        seg.slices = dict(self.seg.slices)
        seg.key_prompts = copy.deepcopy(self.seg.key_prompts)
        seg.stop_reasons = dict(self.seg.stop_reasons)
        return SessionObject(
            seg,
            self.color,
            dict(self.prompts),
            dict(self.pins),
            self.propagated,
            self.committed,
            copy.deepcopy(self.edits),
            dict(self.timing),
            self.source,
        )

    def time_spent(self) -> dict[str, Any]:
        """``{"seconds", "active_seconds", "interactions"}``: wall-clock seconds from the first
        interaction (prompt, brush stroke, candidate, 3D run, proposal) to the last one (the
        commit, usually), and the part of it spent interacting (pauses capped at
        ``ACTIVE_GAP_S``)."""
        t = self.timing
        if not t:
            return {"seconds": 0.0, "active_seconds": 0.0, "interactions": 0}
        return {
            "seconds": round(t["last"] - t["first"], 3),
            "active_seconds": round(t["active"], 3),
            "interactions": int(t["interactions"]),
        }


def touch(obj: SessionObject, now: float) -> None:
    """Record an interaction with ``obj`` at ``now`` (seconds of a monotonic clock)."""
    t = obj.timing
    if not t:
        obj.timing = {"first": now, "last": now, "active": 0.0, "interactions": 1}
        return
    t["active"] += min(max(now - t["last"], 0.0), ACTIVE_GAP_S)
    t["last"] = now
    t["interactions"] += 1


@dataclass
class LabelEdit:
    """Voxels changed in the labels map: flat indices with their old and new values."""

    index: np.ndarray
    before: np.ndarray
    after: np.ndarray


@dataclass
class Action:
    name: str
    before: tuple[list[SessionObject], int | None]
    after: tuple[list[SessionObject], int | None]
    edit: LabelEdit | None


@dataclass
class Job:
    """A 3D computation on a copy of one object; iterate :attr:`steps`, then ``finish_job``."""

    kind: str
    label: int
    z: int | None
    work: SessionObject
    steps: Iterator[Any]


def clean_prompt(prompt: SlicePrompt | dict[str, Any] | None) -> SlicePrompt:
    """The user's part of a prompt (points, box, text; no engine-derived fields), checked."""
    return coerce(prompt).replace(box3d=None, edited_box=None)
