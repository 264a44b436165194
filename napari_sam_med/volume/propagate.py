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

import copy
import logging
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from ..capabilities import model_capabilities
from .box_edits import edit_box as _edit_box
from .objects import ObjectSegmentation
from .prompt import SlicePrompt, coerce
from .propagation_settings import Progress, PropagationSettings
from .slices import SlicePrediction, SliceSegmenter

logger = logging.getLogger(__name__)

KeyPredictor = Callable[[int, SlicePrompt, bool], "SlicePrediction | None"]
"""``(z, prompt, correction) -> prediction``: a key slice's mask, or None to let the model
predict it (``correction``: the slice was corrected after a 3D run)."""


def pinned(pins: Mapping[int, SlicePrediction]) -> KeyPredictor:
    """A key predictor keeping ``pins`` (z -> the mask the user accepted) on their slices."""

    def predict(z: int, prompt: SlicePrompt, correction: bool) -> SlicePrediction | None:
        if z not in pins:
            return None
        pred = copy.copy(pins[z])
        pred.mask = pred.mask.copy()
        return pred

    return predict


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
        x0, y0, z0, x1, y1, z1 = self._check_box3d(box)
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
        lo, hi = 0, self.seg.num_slices - 1
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
        if prompt.box is None and z in obj.slices and obj.slices[z].area:
            prompt = prompt.replace(box=self._box_around(obj.slices[z].mask))
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
        for step in (-1, +1):
            for zz in self._repropagate(obj, z, step, clip, (lo, hi)):
                done += 1
                yield Progress(done, None, zz, "re-propagating")

    # --------------------------------------------------------------- helpers
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
                box, pts, lab = p.arrays()
                p = p.replace(edited_box=_edit_box(box, pts, lab, self.margin()))
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
        ys, xs = np.nonzero(mask)
        m = self.margin()
        h, w = self.seg.slice_shape
        box = [
            max(xs.min() - m, 0.0),
            max(ys.min() - m, 0.0),
            min(xs.max() + m, w - 1.0),
            min(ys.max() + m, h - 1.0),
        ]
        return [float(v) for v in box]

    def _step(self, prev: SlicePrediction, z: int, clip) -> SlicePrediction:
        mask_in = prev.logits[None] if self.settings.use_mask_prompt else None
        box = self._box_around(prev.mask)
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
        if pred.iou < s.min_iou:
            return "low_iou"
        if pred.stability < s.min_stability:
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
            pred = self._step(prev, zz, clip)
            if old is None and self._stop_reason(prev, pred) is not None:
                break
            if pred.area < self.settings.min_area:
                obj.slices.pop(zz, None)
            else:
                obj.slices[zz] = pred
            yield zz
            if old is not None and _dice(old.mask, pred.mask) >= self.settings.change_tol:
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


def trained_with_clicks(model: object) -> bool:
    """Whether ``model``'s checkpoint was fine-tuned with corrective clicks by ``training/``
    (its metadata says so; see :mod:`napari_sam_med.capabilities`)."""
    meta = getattr(model, "checkpoint_metadata", None) or {}
    return isinstance(meta.get("training"), dict) and model_capabilities(model).clicks


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.zeros(2)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s
