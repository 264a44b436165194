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

Key slices (the prompted ones) are predicted by the model, unless a ``key_predictor`` says
otherwise: the public extension point for callers that already hold the mask the user
accepted on a key slice (:func:`pinned`: the plugin and ``sam-med replay``) or that predict
key slices their own way. Prompts are :class:`~.prompt.SlicePrompt` objects (dicts in their
JSON form are read as such); the engine never adds keys to them, it replaces them (the 3D box
a key slice came from, the box that clicks were turned into).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from ..capabilities import REPROPAGATE_MODES, engine_rules, model_capabilities
from ..masks import box_around
from ..metrics import dice
from .box_edits import box_and_clicks as _box_and_clicks
from .box_edits import edit_box as _edit_box
from .box_edits import take_in_clicks, union_box
from .carried_clicks import as_clicks, heading, still_wrong
from .key_predictor import KeyPredictor, pinned
from .objects import ObjectSegmentation
from .prompt import SlicePrompt, check_box3d, coerce
from .propagation_settings import Progress, PropagationSettings
from .slices import SlicePrediction, SliceSegmenter
from .stops import stop_reason

logger = logging.getLogger(__name__)
__all__ = ["KeyPredictor", "Progress", "PropagationSettings", "Propagator", "pinned", "run"]


class Propagator:
    """Runs the 3D modes of one :class:`SliceSegmenter`.

    Args:
        segmenter: the slices and the model.
        settings: the knobs (defaults when None).
        key_predictor: predicts key slices before the model is asked (see :data:`KeyPredictor`
            and :func:`pinned`); None: the model predicts every key slice.
    """

    def __init__(
        self,
        segmenter: SliceSegmenter,
        settings: PropagationSettings | None = None,
        key_predictor: KeyPredictor | None = None,
    ):
        self.seg = segmenter
        self.settings = settings or PropagationSettings()
        self.key_predictor = key_predictor

    # ----------------------------------------------------------------- modes
    def box3d(
        self, obj: ObjectSegmentation, box: list[float] | np.ndarray, text: str | None = None
    ) -> Iterator[Progress]:
        """Segment ``obj`` inside a 3D box ``[x0, y0, z0, x1, y1, z1]`` (inclusive indices);
        ``text`` (models trained with text) joins the box on the middle slice."""
        x0, y0, z0, x1, y1, z1 = check_box3d(box, self.seg.slice_shape, self.seg.num_slices)
        zm = (z0 + z1) // 2
        prompt = SlicePrompt(box=(x0, y0, x1, y1), box3d=(x0, y0, z0, x1, y1, z1), text=text)
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
            obj: its ``key_prompts`` hold ``{z: SlicePrompt}``.
            z_range: inclusive ``(z0, z1)`` limits; None propagates until the object ends.
            clip: ``(x0, y0, x1, y1)`` limits for every mask (e.g. a 3D box's extent).
        """
        if not obj.key_prompts:
            raise ValueError("no prompts: add a box or points on at least one slice")
        _read_prompts(obj)
        keys = sorted(self.seg.check_index(z) for z in obj.key_prompts)
        lo, hi = (0, self.seg.num_slices - 1) if z_range is None else z_range
        obj.slices = {}
        obj.stop_reasons = {}
        total = (hi - lo + 1) if z_range is not None else None
        done = 0
        for z in keys:
            obj.slices[z] = self.predict_key(obj, z, clip)
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
        lo, hi = 0.0, float(self.seg.num_slices - 1)
        _read_prompts(obj)
        for p in obj.key_prompts.values():
            if p.box3d is not None:
                x0, y0, lo, x1, y1, hi = p.box3d
                clip = clip if clip is not None else (x0, y0, x1, y1)
        prompt = obj.key_prompts.get(z, SlicePrompt())
        if box is not None:
            prompt = prompt.replace(box=box)
        if points is not None and len(points):
            prompt = prompt.add_points(points, labels)
        if prompt.box is None and (source := self._box_source(obj, z)) is not None:
            prompt = prompt.replace(box=self._box_around(source.mask))
        if prompt.box is None and not prompt.points:
            raise ValueError(f"correction on slice {z} has no points and no box")
        obj.key_prompts[z] = prompt
        obj.slices[z] = self.predict_key(obj, z, clip, correction=True)
        yield Progress(1, None, z, "corrected slice")
        done = 1
        # slices nearer another key slice keep following that one (as in key_slices)
        below = [k for k in obj.key_prompts if k < z]
        above = [k for k in obj.key_prompts if k > z]
        lo = (max(below) + z) // 2 + 1 if below else int(lo)
        hi = (min(above) + z) // 2 if above else int(hi)
        clicks = as_clicks(points, labels) if self._carry_clicks() else None
        zs = [k for k, p in obj.slices.items() if p.area] if clicks else []
        middle = (min(zs) + max(zs)) / 2 if zs else float(z)
        for step in (-1, +1):
            carried = heading(clicks, z, middle, step)
            for zz in self._repropagate(obj, z, step, clip, (lo, hi), carried):
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

    def predict_key(
        self,
        obj: ObjectSegmentation,
        z: int,
        clip: tuple[float, float, float, float] | None = None,
        correction: bool = False,
    ) -> SlicePrediction:
        """Key slice ``z`` of ``obj`` from its prompt: the ``key_predictor``'s mask, else the
        model's (clicks turned into box edits for box-only models, recorded as the prompt's
        ``edited_box``), limited to ``clip``."""
        p = obj.key_prompts[z]
        pred = None if self.key_predictor is None else self.key_predictor(z, p, correction)
        if pred is None:
            if p.box is not None and p.points and self._clicks_edit_box():
                p = p.replace(edited_box=_edit_box(*_box_and_clicks(p), self.margin()))
                obj.key_prompts[z] = p
            pred = self._model_key(obj.slices.get(z), z, p, correction)
        return self._clip(pred, clip)

    def _model_key(
        self, prev: SlicePrediction | None, z: int, p: SlicePrompt, correction: bool
    ) -> SlicePrediction:
        mask_in = (
            prev.logits[None]
            if (correction and prev is not None and self._correction_mask_prompt())
            else None
        )
        seen = p if p.edited_box is None else SlicePrompt(box=p.edited_box, text=p.text)
        if p.edited_box is None and p.box is not None and p.points and self._takes_in_clicks():
            seen = p.replace(box=take_in_clicks(*_box_and_clicks(p), self.margin()))
        return self.seg.predict(
            z,
            seen,
            mask_input=mask_in,
            source="correction" if correction else p.kind,
            multimask=p.box is None and len(p.points) == 1,
        )

    def _clicks_edit_box(self) -> bool:
        mode = self.settings.click_mode
        if mode not in ("auto", "points", "box"):
            raise ValueError(f"click_mode={mode!r}; expected 'auto', 'points' or 'box'")
        if mode == "auto":
            return not model_capabilities(self.seg.model).clicks
        return mode == "box"

    def _takes_in_clicks(self) -> bool:
        """Models trained for the 3D loop get their box grown to hold positive clicks."""
        return model_capabilities(self.seg.model).mask_prompt

    def _correction_mask_prompt(self) -> bool:
        forced = self.settings.correction_mask_prompt
        if forced is not None:
            return bool(forced)
        return self.settings.use_mask_prompt or model_capabilities(self.seg.model).mask_prompt

    def margin(self) -> float:
        """Pixels added around the previous mask's box: ``box_margin`` on the model grid, or
        ``anisotropy_margin`` x (slice gap / pixel size) there if larger, because a boundary
        moves further between thick slices."""
        s = self.settings
        grid = max(s.box_margin, s.anisotropy_margin * self.seg.anisotropy)
        return grid * max(self.seg.slice_shape) / self.seg.config.img_size

    def _box_around(self, mask: np.ndarray) -> list[float]:
        return box_around(mask, self.margin())

    def thresholds(self) -> tuple[float, float]:
        """``(min_iou, min_stability)``: the settings', else the model's calibrated ones."""
        rules = engine_rules(self.seg.model)
        s = self.settings
        return (
            rules["min_iou"] if s.min_iou is None else float(s.min_iou),
            rules["min_stability"] if s.min_stability is None else float(s.min_stability),
        )

    def _carry_clicks(self) -> bool:
        forced = self.settings.carry_clicks
        return bool(engine_rules(self.seg.model)["carry_clicks"] if forced is None else forced)

    def _repropagate_mode(self) -> str:
        mode = self.settings.repropagate
        if mode == "auto":
            return str(engine_rules(self.seg.model)["repropagate"])
        if mode not in REPROPAGATE_MODES:
            raise ValueError(
                f"repropagate={mode!r}; expected 'auto', 'box', 'union', 'keep' or 'off'"
            )
        return mode

    def _step(
        self,
        prev: SlicePrediction,
        z: int,
        clip,
        widen: SlicePrediction | None = None,
        prior: SlicePrediction | None = None,
        clicks: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> SlicePrediction:
        """Predict slice ``z`` from the box around its neighbour ``prev``'s mask.

        Re-propagation after a correction (see ``PropagationSettings.repropagate``) may pass
        the slice's own earlier result as ``widen`` (its box joins the neighbour's, so that a
        correction near the object's end does not cut the slices beside it down to the end's
        size) and as ``prior`` (its logits become the mask prompt), and ``clicks`` carried
        on from the correction (:mod:`.carried_clicks`)."""
        mask_in = prev.logits[None] if self.settings.use_mask_prompt else None
        box = self._box_around(prev.mask)
        if widen is not None and widen.area:
            box = union_box(box, self._box_around(widen.mask))
        if prior is not None and prior.area:
            mask_in = prior.logits[None]
        pts, lab = clicks if clicks is not None and len(clicks[0]) else (None, None)
        pred = self.seg.predict(
            z, box=np.asarray(box, np.float32), points=pts, labels=lab, mask_input=mask_in,
            source="propagated",
        )  # fmt: skip
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
        return stop_reason(self.seg, self.settings, self.thresholds(), prev, pred)

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
        self,
        obj: ObjectSegmentation,
        z: int,
        step: int,
        clip,
        z_range: tuple[int, int],
        clicks: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Iterator[int]:
        mode = self._repropagate_mode()
        if mode == "off":  # the click changes its own slice only
            return
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
            widen = old if mode in ("keep", "union") else None
            if clicks is not None:
                clicks = still_wrong(*clicks, None if old is None else old.mask)
            pred = self._step(prev, zz, clip, widen, old if mode == "keep" else None, clicks)
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


def _read_prompts(obj: ObjectSegmentation) -> None:
    """``obj``'s key prompts as :class:`SlicePrompt` (JSON-form dicts are read once here)."""
    obj.key_prompts = {
        int(z): coerce(p, f"key prompt of slice {z}") for z, p in obj.key_prompts.items()
    }


def run(job: Iterator[Progress]) -> list[Progress]:
    """Consume a job to the end (no progress display); returns the progress events."""
    return list(job)
