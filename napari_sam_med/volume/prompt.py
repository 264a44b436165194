"""What a user gives on one slice: :class:`SlicePrompt`, the one prompt type of the package.

A slice prompt holds points ``(x, y)`` with their labels (1 inside, 0 outside), a box
``[x0, y0, x1, y1]`` and a text, all in pixels of one slice (SAM order), plus what the 3D
engine derives from it: the 3D box a key slice came from (``box3d``, inclusive voxel indices
``[x0, y0, z0, x1, y1, z1]``) and the box that clicks were turned into for box-only models
(``edited_box``). It is built and checked here only; the layer converter, the manifest, the
CLI, session logs and the engine pass it on unchanged down to ``SliceSegmenter.predict``.

Its JSON form is the dict that logs, manifests and QC traces have always held (keys ``box``,
``box3d``, ``points``, ``point_labels``, ``text``, ``edited_box``; empty fields are left
out). A ``SlicePrompt`` also reads as that mapping (``p["box"]``, ``"text" in p``,
``p == {"box": [...]}``), read-only, so that code written against prompt dicts keeps working.

Adding a field (say ``scribble``) means: a field and its check here, its use in
``SliceSegmenter.predict`` (``volume/slices.py``), and its source in the layer converter
(``plugin/_layers.py``).

Only numpy is imported here (no torch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PromptError

Point = tuple[float, float]
Box = tuple[float, float, float, float]
# JSON key -> what it must be (for error messages)
FIELDS = {
    "box": "[x0, y0, x1, y1] (4 finite numbers)",
    "box3d": "[x0, y0, z0, x1, y1, z1] (6 finite numbers)",
    "points": "a list of [x, y] finite numbers",
    "point_labels": "one 0 or 1 per point",
    "text": "a non-empty string",
    "edited_box": "[x0, y0, x1, y1] (4 finite numbers)",
}


@dataclass(frozen=True, eq=False)
class SlicePrompt(Mapping[str, Any]):
    """The prompt on one slice, in ``(x, y)`` pixels of that slice.

    Attributes:
        points: ``((x, y), ...)`` clicks.
        point_labels: one 1 (inside) or 0 (outside) per point.
        box: ``(x0, y0, x1, y1)`` or None.
        text: a text prompt (models trained with text) or None; stripped.
        box3d: derived: the 3D box ``(x0, y0, z0, x1, y1, z1)`` this key slice came from.
        edited_box: derived: the box the clicks were turned into (``click_mode="box"``).

    Raises:
        PromptError: any field of the wrong shape, type or value (naming it and what was
            expected).
    """

    points: tuple[Point, ...] = ()
    point_labels: tuple[int, ...] = ()
    box: Box | None = None
    text: str | None = None
    box3d: tuple[float, ...] | None = None
    edited_box: Box | None = None

    def __post_init__(self) -> None:
        pts = _points(self.points)
        labels = _labels(self.point_labels, len(pts))
        text = self.text
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                _fail("text", text)
            text = text.strip()
        box3d = _numbers("box3d", self.box3d, 6)
        if box3d is not None:  # z of a 3D box are slice indices
            box3d = (*box3d[:2], int(round(box3d[2])), *box3d[3:5], int(round(box3d[5])))
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "point_labels", labels)
        object.__setattr__(self, "box", _numbers("box", self.box, 4))
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "box3d", box3d)
        object.__setattr__(self, "edited_box", _numbers("edited_box", self.edited_box, 4))

    # ------------------------------------------------------------ building
    @classmethod
    def from_json(cls, data: Any, where: str = "prompt") -> SlicePrompt:
        """A prompt from its JSON form (any log, manifest or QC version), or itself.

        Unknown keys are ignored (later versions may add fields); ``where`` prefixes messages.

        Raises:
            PromptError: ``"<where>: 'box' must be [x0, y0, x1, y1] ..., got [1, 2]"``.
        """
        if isinstance(data, SlicePrompt):
            return data
        if not isinstance(data, Mapping):
            raise PromptError(f"{where} must be an object like {{'box': [...]}}, got {data!r:.80}")
        get: Any = data.get  # raw JSON values: __post_init__ checks and converts them
        try:
            return cls(
                points=() if get("points") is None else get("points"),
                point_labels=() if get("point_labels") is None else get("point_labels"),
                box=get("box"),
                text=get("text"),
                box3d=get("box3d"),
                edited_box=get("edited_box"),
            )
        except PromptError as exc:
            raise PromptError(f"{where}: {exc}") from None

    @classmethod
    def from_arrays(
        cls,
        box: Any = None,
        points: Any = None,
        labels: Any = None,
        text: str | None = None,
    ) -> SlicePrompt:
        """A prompt from numpy-style ``box (4,)``, ``points (N, 2)``, ``labels (N,)``."""
        return cls(
            points=() if points is None else points,
            point_labels=() if labels is None else labels,
            box=box,
            text=text,
        )

    def replace(self, **changes: Any) -> SlicePrompt:
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def add_points(self, points: Any, labels: Any) -> SlicePrompt:
        """A copy with ``points`` ``(N, 2)`` and their ``labels`` after the existing ones."""
        pts, labs = _points(points), _labels(labels, len(_points(points)))
        return self.replace(points=self.points + pts, point_labels=self.point_labels + labs)

    # ------------------------------------------------------------ reading
    @property
    def is_empty(self) -> bool:
        """No points, no box and no text: nothing to predict from."""
        return not self.points and self.box is None and self.text is None

    @property
    def kind(self) -> str:
        """``"box"``, ``"points"`` or ``"text"``: what leads the prediction."""
        return "box" if self.box is not None else ("points" if self.points else "text")

    def clipped(self, slice_shape: tuple[int, int]) -> SlicePrompt:
        """The prompt moved onto a slice of ``(H, W)`` pixels: the box with its corners in
        order and inside the slice, clicks just outside (on its border) moved onto it."""
        h, w = slice_shape
        box = self.box
        if box is not None:
            x0, x1 = sorted((box[0], box[2]))
            y0, y1 = sorted((box[1], box[3]))
            a, b, c, d = (float(v) for v in np.clip([x0, y0, x1, y1], 0, [w - 1, h - 1] * 2))
            box = (a, b, c, d)
        pts = tuple((min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)) for x, y in self.points)
        return self.replace(box=box, points=pts)

    def arrays(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(box (4,) float32, points (N, 2) float32, labels (N,) int64)``, None when absent."""
        box = None if self.box is None else np.asarray(self.box, np.float32)
        if not self.points:
            return box, None, None
        pts = np.asarray(self.points, np.float32).reshape(-1, 2)
        return box, pts, np.asarray(self.point_labels, np.int64)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (only the fields that are set)."""
        out: dict[str, Any] = {}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.box3d is not None:
            out["box3d"] = list(self.box3d)
        if self.points:
            out["points"] = [list(p) for p in self.points]
            out["point_labels"] = list(self.point_labels)
        if self.text is not None:
            out["text"] = self.text
        if self.edited_box is not None:
            out["edited_box"] = list(self.edited_box)
        return out

    # ------------------------------------------- read-only mapping of the JSON form
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"SlicePrompt({self.to_json()})"


def coerce(prompt: SlicePrompt | Mapping[str, Any] | None, where: str = "prompt") -> SlicePrompt:
    """``prompt`` as a :class:`SlicePrompt` (a dict in its JSON form is checked; None: empty)."""
    return SlicePrompt() if prompt is None else SlicePrompt.from_json(prompt, where)


def _fail(key: str, value: Any) -> None:
    raise PromptError(f"'{key}' must be {FIELDS[key]}, got {_show(value)}")


def _show(value: Any) -> str:
    v = value.tolist() if isinstance(value, np.ndarray) else value
    return f"{v!r:.80}"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_)


def _numbers(key: str, value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    seq = value.ravel().tolist() if isinstance(value, np.ndarray) else value
    if isinstance(seq, list | tuple) and len(seq) == 0 and key == "box":
        return None  # an empty box list is no box (as the plugin always read it)
    ok = isinstance(seq, list | tuple) and len(seq) == n and all(map(_is_num, seq))
    if not ok or not all(math.isfinite(float(v)) for v in seq):
        _fail(key, value)
    return tuple(float(v) for v in seq)


def _points(value: Any) -> tuple[Point, ...]:
    seq = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(seq, list | tuple):
        _fail("points", value)
    out = []
    for p in seq:
        p = p.tolist() if isinstance(p, np.ndarray) else p
        ok = isinstance(p, list | tuple) and len(p) == 2 and all(map(_is_num, p))
        if not ok or not all(math.isfinite(float(v)) for v in p):
            _fail("points", value)
        out.append((float(p[0]), float(p[1])))
    return tuple(out)


def _labels(value: Any, n: int) -> tuple[int, ...]:
    seq = value.ravel().tolist() if isinstance(value, np.ndarray) else value
    ok = isinstance(seq, list | tuple) and len(seq) == n
    if not ok or not all(_is_num(v) and v in (0, 1) for v in seq):
        _fail("point_labels", value)
    return tuple(int(v) for v in seq)


def check_box3d(
    box: Any, slice_shape: tuple[int, int], num_slices: int
) -> tuple[float, float, int, float, float, int]:
    """A 3D box ``[x0, y0, z0, x1, y1, z1]`` (inclusive voxel indices) checked against a volume
    of ``num_slices`` slices of ``slice_shape`` (H, W); z rounded to slice indices.

    Raises:
        ValueError: not 6 finite numbers, max below min, or outside the volume.
    """
    b = np.asarray(box, dtype=float).ravel()
    if b.shape != (6,) or not np.isfinite(b).all():
        raise ValueError(f"box3d must be [x0, y0, z0, x1, y1, z1]; got {np.asarray(box).tolist()}")
    x0, y0, z0, x1, y1, z1 = b.tolist()
    h, w = slice_shape
    if x1 < x0 or y1 < y0 or z1 < z0:
        raise ValueError(f"box3d {b.tolist()} has a max corner below its min corner")
    if x0 < 0 or y0 < 0 or z0 < 0 or x1 > w - 1 or y1 > h - 1 or z1 > num_slices - 1:
        raise ValueError(
            f"box3d {b.tolist()} lies outside the volume (x 0..{w - 1}, y 0..{h - 1}, "
            f"z 0..{num_slices - 1}); coordinates are inclusive voxel indices"
        )
    return x0, y0, int(round(z0)), x1, y1, int(round(z1))
