"""Automatic object proposals on one slice, optionally propagated in 3D (no Qt).

"Propose objects" runs the :class:`~napari_sam_med.amg.AutomaticMaskGenerator` on the slice
in view, with the prompt type and thresholds that ``sam-med auto`` uses for the model
(:func:`~napari_sam_med.amg.settings_for_model`: looser for box-trained LiteMedSAM/MedSAM),
on the slice's cached embedding. Masks that are mostly already annotated, tiny, or cover most
of the slice are dropped, the rest ranked by predicted IoU x stability. With ``propagate``
each proposal is propagated through the volume by the 3D engine, as "Segment 3D" would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..masks import box_around
from ..volume.prompt import SlicePrompt, coerce


@dataclass
class ProposalSettings:
    """Knobs of "Propose objects".

    Attributes:
        points_per_side: AMG grid (``sam-med auto`` defaults to 12 too).
        max_proposals: at most this many, the best first.
        min_area: smaller masks (pixels) are dropped.
        max_area_fraction: masks covering more of the slice (body, background) are dropped.
        max_overlap: masks with more than this fraction already labelled are dropped.
        propagate: propagate every proposal through the volume.
    """

    points_per_side: int = 12
    max_proposals: int = 20
    min_area: int = 16
    max_area_fraction: float = 0.5
    max_overlap: float = 0.5
    propagate: bool = False


@dataclass
class Proposal:
    """One proposed object.

    Attributes:
        z: the slice it was found on.
        pred: its ``SlicePrediction`` there (mask, predicted IoU, stability).
        prompt: a box around the mask (what a replay prompts).
        point: the grid point that produced it, ``[x, y]``.
        slices: z -> ``SlicePrediction`` when propagated in 3D (else None).
    """

    z: int
    pred: Any
    prompt: SlicePrompt
    point: list[float] | None = None
    slices: dict[int, Any] | None = None

    def __post_init__(self) -> None:
        self.prompt = coerce(self.prompt, "proposal prompt")  # its JSON form is read too

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for the log."""
        out = {
            "z": self.z,
            "prompt": self.prompt.to_json(),
            "iou": round(float(self.pred.iou), 4),
            "stability": round(float(self.pred.stability), 4),
            "area": self.pred.area,
            "propagated": bool(self.slices),
        }
        if self.slices:
            out["slices"] = [min(self.slices), max(self.slices)]
        return out

    def mask3d(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The ``(Z, Y, X)`` bool mask (one slice unless propagated)."""
        out = np.zeros(shape, bool)
        for z, p in (self.slices or {self.z: self.pred}).items():
            out[z] = p.mask
        return out


class _Cancelled(Exception):
    pass


def propose(
    engine: Any, z: int, labelled: np.ndarray, settings: ProposalSettings
) -> Iterator[tuple[int, int, str]]:
    """Find proposals on slice ``z`` (runs in a worker); yields ``(done, total, what)``.

    Args:
        engine: the plugin's ``Engine`` (model bound to the image).
        labelled: ``(Y, X)`` bool, the voxels of slice ``z`` that are already annotated.

    Returns:
        The proposals, best first. Stopping the generator (Cancel) stops the generator's
        work at its next batch of prompts.
    """
    records = yield from _amg_records(engine, z, settings)
    kept = _filter(records, labelled, settings)
    props = [_proposal(z, r) for r in kept]
    if settings.propagate and engine.num_slices > 1:
        for i, p in enumerate(props):
            yield i, len(props), f"propagating proposal {i + 1}/{len(props)}"
            p.slices = yield from _propagate(engine, p)
    return props


def _amg_records(engine: Any, z: int, settings: ProposalSettings) -> Iterator[Any]:
    """Run the AMG in a helper thread so that progress and cancel work at batch level."""
    from ..amg import AutomaticMaskGenerator, settings_for_model
    from ..predictor import SamPredictor

    seg = engine.segmenter

    class _CachedPredictor(SamPredictor):
        def set_image(self, image: np.ndarray) -> None:  # the slice's cached embedding
            if tuple(np.shape(image)[:2]) == seg.slice_shape:
                self.set_embedding(*seg.embedding(z))
            else:
                super().set_image(image)

    cancel, done, result = threading.Event(), [0], {}

    class _Generator(AutomaticMaskGenerator):
        def _process_batch(self, points_xy: np.ndarray) -> Any:
            if cancel.is_set():
                raise _Cancelled
            out = super()._process_batch(points_xy)
            done[0] += 1
            return out

    amg = settings_for_model(engine.model.config.name)
    gen = _Generator(engine.model, points_per_side=settings.points_per_side, **amg)
    gen.predictor = _CachedPredictor(engine.model)
    n = settings.points_per_side**2
    total = -(-n // gen.settings.points_per_batch)

    def run() -> None:
        try:
            result["records"] = gen.generate(seg.slice_image(z))
        except BaseException as exc:  # handed to the worker thread below
            result["error"] = exc

    thread = threading.Thread(target=run, name="sam-med-proposals", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
            yield min(done[0], total), total, f"automatic masks on slice {z}"
    finally:
        cancel.set()  # the worker was quit (or failed): stop the helper at its next batch
    if "error" in result:
        raise result["error"]
    return result["records"]


def _filter(records: list[dict], labelled: np.ndarray, s: ProposalSettings) -> list[dict]:
    h, w = labelled.shape
    out = []
    for r in records:
        m, area = r["segmentation"], r["area"]
        if area < s.min_area or area > s.max_area_fraction * h * w:
            continue
        if (m & labelled).sum() > s.max_overlap * area:
            continue
        out.append(r)
    out.sort(key=lambda r: -r["predicted_iou"] * r["stability_score"])
    return out[: s.max_proposals]


def _proposal(z: int, rec: dict[str, Any]) -> Proposal:
    from ..volume.slices import SlicePrediction

    mask = np.asarray(rec["segmentation"], bool)
    prompt = SlicePrompt(box=box_around(mask))
    logits = np.zeros((1, 1), np.float32)
    pred = SlicePrediction(
        int(z), mask, logits, rec["predicted_iou"], rec["stability_score"], "proposal", prompt
    )
    point = [float(v) for v in rec["point_coords"][0]] if rec.get("point_coords") else None
    return Proposal(int(z), pred, prompt, point)


def _propagate(engine: Any, p: Proposal) -> Iterator[tuple[int, int, str]]:
    from ..volume.objects import ObjectSegmentation

    obj = ObjectSegmentation(1, "proposal")
    obj.key_prompts = {p.z: p.prompt}
    for step in engine.propagator({p.z: p.pred}).key_slices(obj):
        yield step.done, step.total or 0, f"propagating (slice {step.z})"
    return dict(obj.slices)


class ProposalQueue:
    """The proposals under review; the current one is shown and decided on first."""

    def __init__(self, proposals: list[Proposal], clock: Any) -> None:
        self.pending = list(proposals)
        self.accepted = self.rejected = 0
        self._clock = clock
        self._shown = clock()

    @property
    def current(self) -> Proposal | None:
        return self.pending[0] if self.pending else None

    def take(self, accepted: bool) -> tuple[Proposal, float]:
        """Remove the current proposal; returns it with the seconds it was shown."""
        if not self.pending:
            raise ValueError("no proposal left to accept or reject: press Propose objects")
        p, now = self.pending.pop(0), self._clock()
        seconds = round(now - self._shown, 3)
        self._shown = now
        if accepted:
            self.accepted += 1
        else:
            self.rejected += 1
        return p, seconds

    def skip(self) -> None:
        """Move the current proposal to the end of the queue."""
        if len(self.pending) > 1:
            self.pending.append(self.pending.pop(0))
            self._shown = self._clock()
