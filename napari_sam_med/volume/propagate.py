"""The 3D engine: prompts on one or more slices become a 3D mask by propagation.

Every mode is a generator that yields :class:`Progress` after each slice, so a GUI gets
progress and cancellation (stop iterating) for free and the CLI wraps it in tqdm. Results
accumulate in an :class:`~napari_sam_med.volume.objects.ObjectSegmentation`.

Modes:
    * :meth:`Propagator.box3d` - a 3D box ``[x0, y0, z0, x1, y1, z1]`` (inclusive voxel
      indices): the middle slice from its 2D box, then both ways inside the z-range, each
      slice prompted by the previous mask's box and its logits; masks stay inside the box.
    * :meth:`Propagator.key_slices` - prompts on one or several slices: propagate between
      them (meeting half-way) and beyond them until the object ends (empty mask, low
      predicted IoU or stability, an abrupt area, centroid or intensity jump) or the
      volume's edge.
    * :meth:`Propagator.correct` - new points or a box on any slice: re-segment it and
      re-propagate outward only as far as the result changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..capabilities import REPROPAGATE_MODES, engine_rules, model_capabilities
from ..masks import box_around
from ..metrics import dice
from .box_edits import corner_box as _corner_box
from .box_edits import edit_box as _edit_box
from .box_edits import take_in_clicks, union_box
from .objects import ObjectSegmentation
from .slices import SlicePrediction, SliceSegmenter

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """One step of a running job: ``done`` of ``total`` slices (total may be unknown)."""

    done: int
    total: int | None
    z: int
    message: str = ""


@dataclass
class PropagationSettings:
    """Knobs of the propagation (defaults tuned on the dev set; see benchmarks/).

    Attributes:
        box_margin: pixels (on the model-input grid) added around the previous mask's box.
        use_mask_prompt: feed the previous slice's low-res logits as the mask prompt while
            propagating.
        correction_mask_prompt: a correction passes the slice's own previous logits as the
            mask prompt: ``None`` follows the model's capabilities (models trained with the
            click simulation of ``training/`` saw exactly that), or force it on/off.
        min_area: a mask with fewer pixels counts as empty.
        min_iou / min_stability: stop below these (modes without a z-range); ``None``: the
            values calibrated for the model (its checkpoint's ``engine`` metadata, see
            :func:`napari_sam_med.capabilities.engine_rules`), else 0.5 and 0.5.
        max_area_growth: stop when the area grows by more than this factor in one slice.
        max_centroid_shift: stop when the centroid moves more than this fraction of the
            previous mask's equivalent diameter.
        max_intensity_jump / min_intensity_spread: stop when the median intensity (0-255
            after the preset) under the mask moves by more than ``max_intensity_jump`` times
            the previous slice's spread (at least ``min_intensity_spread``): the mask has left
            the tumour for another tissue.
        click_mode: how clicks that come with a box reach the model: ``"points"`` as point
            prompts; ``"box"`` as edits of the box (a positive click outside grows it to take
            the click in, a negative click inside moves the nearest edge past it); ``"auto"``
            follows the model's recorded capabilities
            (:func:`napari_sam_med.capabilities.model_capabilities`): box edits for weights
            trained on boxes only (LiteMedSAM as published, whose point answers are weak),
            points otherwise.
        change_tol: a correction stops re-propagating where Dice(new, old) >= this.
        repropagate: how a correction reaches the slices beside it: ``"box"`` each from the
            box around its neighbour's new mask; ``"union"`` that box widened by the slice's
            own earlier box; ``"keep"`` as union, with the slice's earlier logits as the mask
            prompt; ``"off"`` not at all (the click changes its own slice only); ``"auto"``:
            the model's calibrated rule (:func:`napari_sam_med.capabilities.engine_rules`),
            else ``box``.
        anisotropy_margin: the box margin is at least this times the ratio of the slice
            gap to the in-plane pixel size (needs the segmenter's ``spacing``).
    """

    box_margin: float = 3.0
    use_mask_prompt: bool = False
    correction_mask_prompt: bool | None = None
    min_area: int = 4
    min_iou: float | None = None
    min_stability: float | None = None
    max_area_growth: float = 2.5
    max_centroid_shift: float = 0.6
    max_intensity_jump: float = 1.2
    min_intensity_spread: float = 6.0
    change_tol: float = 0.97
    repropagate: str = "auto"
    click_mode: str = "auto"
    anisotropy_margin: float = 0.7


class Propagator:
    """Runs the 3D modes of one :class:`SliceSegmenter`."""

    def __init__(self, segmenter: SliceSegmenter, settings: PropagationSettings | None = None):
        self.seg = segmenter
        self.settings = settings or PropagationSettings()

    # ----------------------------------------------------------------- modes
    def box3d(
        self, obj: ObjectSegmentation, box: list[float] | np.ndarray, text: str | None = None
    ) -> Iterator[Progress]:
        """Segment ``obj`` inside a 3D box ``[x0, y0, z0, x1, y1, z1]`` (inclusive indices);
        ``text`` (models trained with text) joins the box on the middle slice."""
        x0, y0, z0, x1, y1, z1 = self._check_box3d(box)
        zm = (z0 + z1) // 2
        prompt: dict[str, Any] = {"box": [x0, y0, x1, y1], "box3d": [x0, y0, z0, x1, y1, z1]}
        if text is not None:
            prompt["text"] = text
        obj.key_prompts = {zm: prompt}
        yield from self.key_slices(obj, z_range=(z0, z1), clip=(x0, y0, x1, y1))

    def key_slices(
        self,
        obj: ObjectSegmentation,
        z_range: tuple[int, int] | None = None,
        clip: tuple[float, float, float, float] | None = None,
    ) -> Iterator[Progress]:
        """(Re)build ``obj`` from all of its ``key_prompts``.

        Args:
            obj: its ``key_prompts`` hold ``{z: {"box": [...], "points": [[x, y]...],
                "point_labels": [...]}}``.
            z_range: inclusive ``(z0, z1)`` limits; None propagates until the object ends.
            clip: ``(x0, y0, x1, y1)`` limits for every mask (e.g. a 3D box's extent).
        """
        if not obj.key_prompts:
            raise ValueError("no prompts: add a box or points on at least one slice")
        keys = sorted(self.seg.check_index(z) for z in obj.key_prompts)
        lo, hi = (0, self.seg.num_slices - 1) if z_range is None else z_range
        obj.slices = {}
        obj.stop_reasons = {}
        total = (hi - lo + 1) if z_range is not None else None
        done = 0
        for z in keys:
            obj.slices[z] = self._predict_key(obj, z, clip)
            done += 1
            yield Progress(done, total, z, "key slice")
        for a, b in zip(keys[:-1], keys[1:], strict=True):
            mid = (a + b) // 2
            for z in self._walk(obj, a, +1, mid, clip, stops=False):
                done += 1
                yield Progress(done, total, z, "between key slices")
            for z in self._walk(obj, b, -1, mid + 1, clip, stops=False):
                done += 1
                yield Progress(done, total, z, "between key slices")
        for start, step, limit, name in ((keys[0], -1, lo, "down"), (keys[-1], +1, hi, "up")):
            walker = self._walk(obj, start, step, limit, clip, stops=z_range is None, name=name)
            for z in walker:
                done += 1
                yield Progress(done, total, z, f"propagating {name}")

    def correct(
        self,
        obj: ObjectSegmentation,
        z: int,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: list[float] | None = None,
        clip: tuple[float, float, float, float] | None = None,
    ) -> Iterator[Progress]:
        """Add points (and/or replace the box) on slice ``z`` and re-propagate as needed.

        Slice ``z`` becomes a key slice: it re-propagates outward, up to half-way to the next
        key slice on each side (slices nearer that one keep following it), and stops early
        where the result no longer changes. An object made from a 3D box stays inside that
        box (its xy extent and z-range).
        """
        z = self.seg.check_index(z)
        lo, hi = 0, self.seg.num_slices - 1
        for p in obj.key_prompts.values():
            if p.get("box3d"):
                x0, y0, lo, x1, y1, hi = p["box3d"]
                clip = clip if clip is not None else (x0, y0, x1, y1)
        prompt = dict(obj.key_prompts.get(z, {}))
        if box is not None:
            prompt["box"] = [float(v) for v in box]
        if points is not None and len(points):
            prompt["points"] = list(prompt.get("points", [])) + np.asarray(points).tolist()
            prompt["point_labels"] = list(prompt.get("point_labels", [])) + [
                int(v) for v in np.asarray(labels).ravel()
            ]
        if "box" not in prompt and (source := self._box_source(obj, z)) is not None:
            prompt["box"] = self._box_around(source.mask)
        if not prompt.get("box") and not prompt.get("points"):
            raise ValueError(f"correction on slice {z} has no points and no box")
        obj.key_prompts[z] = prompt
        obj.slices[z] = self._predict_key(obj, z, clip, correction=True)
        yield Progress(1, None, z, "corrected slice")
        done = 1
        # slices nearer another key slice keep following that one (as in key_slices)
        below = [k for k in obj.key_prompts if k < z]
        above = [k for k in obj.key_prompts if k > z]
        lo = (max(below) + z) // 2 + 1 if below else int(lo)
        hi = (min(above) + z) // 2 if above else int(hi)
        for step in (-1, +1):
            for zz in self._repropagate(obj, z, step, clip, (lo, hi)):
                done += 1
                yield Progress(done, None, zz, "re-propagating")

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _box_source(obj: ObjectSegmentation, z: int) -> SlicePrediction | None:
        """The mask whose box a correction on slice ``z`` without a box of its own starts from:
        the slice's own, else (a click on an empty slice beside the object, where the object
        goes on) a neighbour's, as propagation would have prompted it."""
        for zz in (z, z - 1, z + 1):
            pred = obj.slices.get(zz)
            if pred is not None and pred.area:
                return pred
        return None

    def _check_box3d(self, box) -> tuple[float, float, int, float, float, int]:
        b = np.asarray(box, dtype=float).ravel()
        if b.shape != (6,) or not np.isfinite(b).all():
            raise ValueError(
                f"box3d must be [x0, y0, z0, x1, y1, z1]; got {np.asarray(box).tolist()}"
            )
        x0, y0, z0, x1, y1, z1 = b.tolist()
        h, w = self.seg.slice_shape
        if x1 < x0 or y1 < y0 or z1 < z0:
            raise ValueError(f"box3d {b.tolist()} has a max corner below its min corner")
        if x0 < 0 or y0 < 0 or z0 < 0 or x1 > w - 1 or y1 > h - 1 or z1 > self.seg.num_slices - 1:
            raise ValueError(
                f"box3d {b.tolist()} lies outside the volume (x 0..{w - 1}, y 0..{h - 1}, "
                f"z 0..{self.seg.num_slices - 1}); coordinates are inclusive voxel indices"
            )
        return x0, y0, int(round(z0)), x1, y1, int(round(z1))

    def _predict_key(
        self, obj: ObjectSegmentation, z: int, clip, correction: bool = False
    ) -> SlicePrediction:
        p = obj.key_prompts[z]
        pts = np.asarray(p["points"], dtype=np.float32) if p.get("points") else None
        lab = np.asarray(p["point_labels"], dtype=np.int64) if p.get("points") else None
        box = _corner_box(p["box"]) if p.get("box") else None
        prev = obj.slices.get(z)
        mask_in = (
            prev.logits[None]
            if (correction and prev is not None and self._correction_mask_prompt())
            else None
        )
        text = p.get("text")
        kind = "box" if box is not None else ("points" if pts is not None else "text")
        source = "correction" if correction else kind
        if box is not None and pts is not None and self._clicks_edit_box():
            box, pts, lab = _edit_box(box, pts, lab, self.margin()), None, None
            p["edited_box"] = [float(v) for v in box]
        elif box is not None and pts is not None and model_capabilities(self.seg.model).mask_prompt:
            box = take_in_clicks(box, pts, lab, self.margin())  # trained for the 3D loop
        pred = self.seg.predict(
            z,
            box=box,
            points=pts,
            labels=lab,
            mask_input=mask_in,
            source=source,
            multimask=box is None and pts is not None and len(pts) == 1,
            text=text,
        )
        pred.prompt.pop("candidates", None)
        return self._clip(pred, clip)

    def _clicks_edit_box(self) -> bool:
        mode = self.settings.click_mode
        if mode not in ("auto", "points", "box"):
            raise ValueError(f"click_mode={mode!r}; expected 'auto', 'points' or 'box'")
        if mode == "auto":
            return not model_capabilities(self.seg.model).clicks
        return mode == "box"

    def _correction_mask_prompt(self) -> bool:
        forced = self.settings.correction_mask_prompt
        if forced is not None:
            return bool(forced)
        return self.settings.use_mask_prompt or model_capabilities(self.seg.model).mask_prompt

    def thresholds(self) -> tuple[float, float]:
        """``(min_iou, min_stability)``: the settings', else the model's calibrated ones."""
        rules = engine_rules(self.seg.model)
        s = self.settings
        return (
            rules["min_iou"] if s.min_iou is None else float(s.min_iou),
            rules["min_stability"] if s.min_stability is None else float(s.min_stability),
        )

    def _repropagate_mode(self) -> str:
        mode = self.settings.repropagate
        if mode == "auto":
            return str(engine_rules(self.seg.model)["repropagate"])
        if mode not in REPROPAGATE_MODES:
            raise ValueError(
                f"repropagate={mode!r}; expected 'auto', 'box', 'union', 'keep' or 'off'"
            )
        return mode

    def margin(self) -> float:
        """Pixels added around the previous mask's box: ``box_margin`` on the model grid, or
        ``anisotropy_margin`` x (slice gap / pixel size) there if larger, because a boundary
        moves further between thick slices."""
        s = self.settings
        grid = max(s.box_margin, s.anisotropy_margin * self.seg.anisotropy)
        return grid * max(self.seg.slice_shape) / self.seg.config.img_size

    def _box_around(self, mask: np.ndarray) -> list[float]:
        return box_around(mask, self.margin())

    def _step(
        self,
        prev: SlicePrediction,
        z: int,
        clip,
        widen: SlicePrediction | None = None,
        prior: SlicePrediction | None = None,
    ) -> SlicePrediction:
        """Predict slice ``z`` from the box around its neighbour ``prev``'s mask.

        Re-propagation after a correction (see ``PropagationSettings.repropagate``) may pass
        the slice's own earlier result as ``widen`` (its box joins the neighbour's, so that a
        correction near the object's end does not cut the slices beside it down to the end's
        size) and as ``prior`` (its logits become the mask prompt)."""
        mask_in = prev.logits[None] if self.settings.use_mask_prompt else None
        box = self._box_around(prev.mask)
        if widen is not None and widen.area:
            box = union_box(box, self._box_around(widen.mask))
        if prior is not None and prior.area:
            mask_in = prior.logits[None]
        pred = self.seg.predict(
            z, box=np.asarray(box, np.float32), mask_input=mask_in, source="propagated"
        )
        return self._clip(pred, clip)

    @staticmethod
    def _clip(pred: SlicePrediction, clip) -> SlicePrediction:
        if clip is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in clip)
            keep = np.zeros_like(pred.mask)
            keep[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
            pred.mask &= keep
        return pred

    def _stop_reason(self, prev: SlicePrediction, pred: SlicePrediction) -> str | None:
        s = self.settings
        if pred.area < s.min_area:
            return "empty"
        min_iou, min_stability = self.thresholds()
        if pred.iou < min_iou:
            return "low_iou"
        if pred.stability < min_stability:
            return "low_stability"
        if pred.area > s.max_area_growth * max(prev.area, 1):
            return "area_jump"
        c0, c1 = _centroid(prev.mask), _centroid(pred.mask)
        diam = 2.0 * np.sqrt(max(prev.area, 1) / np.pi)
        if np.hypot(*(c1 - c0)) > s.max_centroid_shift * diam:
            return "centroid_jump"
        before = self.seg.slice_image(prev.z)[prev.mask]
        after = self.seg.slice_image(pred.z)[pred.mask]
        spread = max(float(before.std()), s.min_intensity_spread)
        if abs(float(np.median(after)) - float(np.median(before))) > s.max_intensity_jump * spread:
            return "intensity_jump"
        return None

    def _walk(
        self,
        obj: ObjectSegmentation,
        start: int,
        step: int,
        limit: int,
        clip,
        stops: bool,
        name: str | None = None,
    ) -> Iterator[int]:
        """Propagate from ``start`` (exclusive) towards ``limit`` (inclusive)."""
        prev = obj.slices[start]
        z = start + step
        reason = "z_range" if not stops else "volume_edge"
        while (z <= limit) if step > 0 else (z >= limit):
            if prev.area < self.settings.min_area:
                reason = "empty"
                break
            pred = self._step(prev, z, clip)
            if stops:
                why = self._stop_reason(prev, pred)
                if why is not None:
                    reason = why
                    break
            elif pred.area < self.settings.min_area:
                reason = "empty"
                break
            obj.slices[z] = pred
            yield z
            prev = pred
            z += step
        if name is not None:
            obj.stop_reasons[name] = reason

    def _repropagate(
        self, obj: ObjectSegmentation, z: int, step: int, clip, z_range: tuple[int, int]
    ) -> Iterator[int]:
        prev = obj.slices[z]
        zz = z + step
        while z_range[0] <= zz <= z_range[1] and zz not in obj.key_prompts:
            old = obj.slices.get(zz)
            if prev.area < self.settings.min_area:
                if old is not None:
                    del obj.slices[zz]
                    yield zz
                    zz += step
                    continue
                break
            mode = self._repropagate_mode()
            if mode == "off":
                break
            widen = old if mode in ("keep", "union") else None
            pred = self._step(prev, zz, clip, widen, old if mode == "keep" else None)
            if old is None and self._stop_reason(prev, pred) is not None:
                break
            if pred.area < self.settings.min_area:
                obj.slices.pop(zz, None)
            else:
                obj.slices[zz] = pred
            yield zz
            if old is not None and dice(old.mask, pred.mask) >= self.settings.change_tol:
                break
            prev = pred
            zz += step


def run(job: Iterator[Progress]) -> list[Progress]:
    """Consume a job to the end (no progress display); returns the progress events."""
    return list(job)


def trained_with_clicks(model: object) -> bool:
    """Whether ``model``'s checkpoint was fine-tuned with corrective clicks by ``training/``
    (its metadata says so; see :mod:`napari_sam_med.capabilities`)."""
    meta = getattr(model, "checkpoint_metadata", None) or {}
    return isinstance(meta.get("training"), dict) and model_capabilities(model).clicks


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.zeros(2)
