"""Text prompts in 3D: find the object by name on the slices, then propagate from the best one.

A text prompt alone ("tumour") has no position. :func:`segment_text` runs it on every slice
of a search range (the whole volume by default), takes the most confident slice as the seed,
and propagates from there with :meth:`Propagator.key_slices` until the object ends. Text
together with a box or points is just one more prompt on their key slices (see
:func:`add_text`), so it needs no search.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .objects import ObjectSegmentation
from .prompt import SlicePrompt, coerce
from .propagate import Progress, Propagator
from .slices import SlicePrediction


def segment_text(
    prop: Propagator,
    obj: ObjectSegmentation,
    text: str,
    z_range: tuple[int, int] | None = None,
) -> Iterator[Progress]:
    """Segment ``obj`` from a text prompt alone: search the slices, seed, propagate.

    Every slice in ``z_range`` (inclusive; all when None) is predicted from the text only.
    A slice is a *candidate* when its mask has at least ``min_area`` pixels (the propagation
    setting). The seed is the candidate with the highest predicted IoU (ties: the larger
    mask): the ranking is relative, because after a short fine-tune a text model's IoU head
    and logits are calibrated lower for text than for boxes (predicted IoU ~0.35 and stability
    near 0 for masks of Dice 0.7 on the dev data). From the seed the object propagates both
    ways until it ends (it may leave the search range). ``obj.stop_reasons["search"]`` names
    the seed and its scores, and says "low confidence" when its predicted IoU or stability is
    below ``min_iou`` / ``min_stability``. With no candidate the object stays empty and the
    reason says so.

    Yields:
        :class:`Progress` per searched slice (``total`` = slices in the range), then the
        propagation's own events (``total`` None).
    """
    seg = prop.seg
    lo, hi = (0, seg.num_slices - 1) if z_range is None else z_range
    lo, hi = seg.check_index(lo), seg.check_index(hi)
    if hi < lo:
        raise ValueError(f"text search range {z_range} is empty; expected z0 <= z1")
    best: tuple[float, int, int, float, float] | None = None  # (score, area, z, iou, stab)
    total = hi - lo + 1
    for i, z in enumerate(range(lo, hi + 1)):
        pred = seg.predict(z, text=text, source="text")
        if _candidate(prop, pred):
            key = (pred.iou, pred.area, z, pred.iou, pred.stability)
            best = key if best is None or key[:2] > best[:2] else best
        yield Progress(i + 1, total, z, f"text search: {text!r}")
    obj.slices, obj.stop_reasons = {}, {}
    if best is None:
        obj.key_prompts = {}
        obj.stop_reasons["search"] = f"no mask for {text!r} on slices {lo}..{hi}"
        return
    _, _, z, iou, stab = best
    reason = f"seed slice {z}: predicted IoU {iou:.2f}, stability {stab:.2f}"
    min_iou, min_stability = prop.thresholds()
    if iou < min_iou or stab < min_stability:
        reason += (
            f" (low confidence: below IoU {min_iou:.2f} / stability {min_stability:.2f};"
            " check the result)"
        )
    obj.key_prompts = {z: SlicePrompt(text=text)}
    yield from prop.key_slices(obj)
    obj.stop_reasons["search"] = reason


def add_text(key_prompts: Mapping[int, SlicePrompt], text: str) -> dict[int, SlicePrompt]:
    """``key_prompts`` with ``text`` joining every key slice's prompt."""
    return {z: coerce(p).replace(text=text) for z, p in key_prompts.items()}


def _candidate(prop: Propagator, pred: SlicePrediction) -> bool:
    return pred.area >= prop.settings.min_area
