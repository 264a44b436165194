"""Interactive-segmentation benchmark: Dice against clicks, NoC@85/90, seconds per interaction.

The click simulator follows the usual protocol (SAM's appendix, RITM's NoC evaluation):

1. The first prompt is the ground truth's tight box on the slice (``x0, y0, x1, y1``,
   inclusive pixel indices).
2. Each corrective click goes to the centre (maximum of the distance transform) of the largest
   connected error region of the previous prediction: positive in a miss (``gt & ~pred``),
   negative in a leak (``pred & ~gt``). Clicks accumulate; the previous low-res logits are
   passed as ``mask_input``.

Evaluated slices: for every label value of a case, the slice with the largest area, and
optionally more slices spread evenly over the object's extent. Timing: ``embed_s`` is the
encoder per slice, ``interaction_s`` one prompt -> mask round trip on a cached embedding.

Datasets are found by :func:`napari_sam_med.export.discover_cases`. This module uses only the
package's own APIs (never ``training/``); ``scipy`` is needed for the distance transform
(``pip install 'napari-sam-med[eval]'``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .export import EvalCase
from .masks import mask_box
from .metrics import dice, ndimage
from .outputs import write_bytes_atomic
from .volume.io import check_label_matches, read_volume
from .volume.segment import resolve_preset
from .volume.slices import SliceSegmenter

if TYPE_CHECKING:
    from .modeling.protocol import PromptModel

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("model", "objects", "dice_box", "dice_1", "dice_3", "dice_5")


@dataclass(frozen=True)
class ClickSettings:
    """Simulator settings.

    Attributes:
        max_clicks: corrective clicks after the box (NoC is capped here).
        thresholds: Dice levels for NoC (0.85, 0.90).
        slices_per_object: evaluated slices per object (1 = the largest-area slice only).
        mask_input: pass the previous low-res logits as the mask prompt.
    """

    max_clicks: int = 20
    thresholds: tuple[float, ...] = (0.85, 0.90)
    slices_per_object: int = 1
    mask_input: bool = True

    def __post_init__(self) -> None:
        if self.max_clicks < 0:
            raise ValueError(f"max_clicks={self.max_clicks}; expected >= 0")
        if self.slices_per_object < 1:
            raise ValueError(f"slices_per_object={self.slices_per_object}; expected >= 1")
        for t in self.thresholds:
            if not 0.0 < t <= 1.0:
                raise ValueError(f"NoC threshold {t}; expected a Dice in (0, 1]")


@dataclass
class ObjectResult:
    """One simulated object slice. ``dice[k]`` is the Dice after the box and ``k`` clicks."""

    model: str
    case: str
    label: int
    z: int
    dice: list[float] = field(default_factory=list)
    interaction_s: list[float] = field(default_factory=list)
    embed_s: float = 0.0

    def noc(self, threshold: float, cap: int) -> int:
        """Clicks after the box to reach ``threshold`` (0: the box alone); ``cap`` if never."""
        for k, d in enumerate(self.dice):
            if d >= threshold:
                return k
        return cap


# ------------------------------------------------------------------------ simulator
def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """Corrective click ``(x, y, label)`` at the centre of the largest error region.

    Args:
        pred: ``(H, W)`` bool prediction; gt: ``(H, W)`` bool ground truth.

    Returns:
        ``(x, y, 1)`` inside a miss, ``(x, y, 0)`` inside a leak; with no error, the centre of
        ``gt`` as a positive click.
    """
    nd = ndimage()
    error = pred != gt
    region = gt if not error.any() else error
    comp, n = nd.label(region)
    if n > 1:
        sizes = np.bincount(comp.ravel())[1:]
        region = comp == int(np.argmax(sizes)) + 1
    dist = nd.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), int(bool(gt[y, x]))


def simulate_object(
    seg: SliceSegmenter, z: int, gt: np.ndarray, settings: ClickSettings, model_name: str = ""
) -> ObjectResult:
    """Box, then ``settings.max_clicks`` corrective clicks on slice ``z`` of ``seg``.

    Args:
        seg: the volume's :class:`SliceSegmenter`.
        z: slice index; gt: ``(H, W)`` bool ground truth of the object on that slice.
    """
    t0 = time.perf_counter()
    seg.embedding(z)
    res = ObjectResult(model_name, "", 0, int(z), embed_s=time.perf_counter() - t0)
    box = mask_box(gt)
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    logits, prev = None, None
    for _ in range(settings.max_clicks + 1):
        if prev is not None:
            x, y, lab = next_click(prev, gt)
            points.append((x, y))
            labels.append(lab)
        mask_in = logits[None] if settings.mask_input and logits is not None else None
        t0 = time.perf_counter()
        pred = seg.predict(
            z,
            box=box,
            points=np.array(points, dtype=np.float32) if points else None,
            labels=np.array(labels) if labels else None,
            mask_input=mask_in,
            source="evaluate",
        )
        res.interaction_s.append(time.perf_counter() - t0)
        res.dice.append(dice(pred.mask, gt))
        logits, prev = pred.logits, pred.mask
    return res


def object_slices(mask3d: np.ndarray, n: int = 1) -> list[int]:
    """The largest-area slice of a ``(Z, H, W)`` mask; for ``n > 1`` ``n`` interior slices
    spread evenly over the object's extent (the two end caps excluded, as in training
    validation: a tumour's first and last slices hold slivers that measure the box, not the
    model), the one nearest the largest replaced by it."""
    areas = mask3d.reshape(mask3d.shape[0], -1).sum(1)
    present = np.nonzero(areas)[0]
    if present.size == 0:
        return []
    largest = int(np.argmax(areas))
    if n == 1:
        return [largest]
    spread = present[np.linspace(0, present.size - 1, n + 2)[1:-1].round().astype(int)]
    chosen = sorted({int(z) for z in spread})
    chosen[int(np.argmin([abs(z - largest) for z in chosen]))] = largest  # keep the largest
    return sorted(set(chosen))


def evaluate_model(
    model: PromptModel,
    cases: Sequence[EvalCase],
    settings: ClickSettings = ClickSettings(),
    model_name: str = "",
    preset: str | None = None,
    on_object: Callable[[ObjectResult], None] | None = None,
) -> list[ObjectResult]:
    """Simulate every object (label value) of every case with one model.

    Args:
        model: a model from ``build_sam``.
        preset: intensity preset; ``None`` guesses it from the case's modality and values.
        on_object: called after each simulated object slice (progress).

    Raises:
        ValueError: unreadable files, a label not on the image grid, or an all-empty label.
    """
    results = []
    for case in cases:
        image = read_volume(case.image)
        label_vol = read_volume(case.label)
        check_label_matches(label_vol, image)
        label = label_vol.array
        values = [int(v) for v in np.unique(label) if v > 0]
        if not values:
            raise ValueError(f"{case.label}: label is empty (no voxel > 0)")
        p = resolve_preset(preset, case.modality, image)
        seg = SliceSegmenter(model, image.array, preset=p, spacing=image.spacing)
        for value in values:
            obj = label == value
            for z in object_slices(obj, settings.slices_per_object):
                r = simulate_object(seg, z, obj[z], settings, model_name)
                r.case, r.label = case.name, value
                results.append(r)
                if on_object is not None:
                    on_object(r)
    return results


# -------------------------------------------------------------------------- reports
def summarise(results: Sequence[ObjectResult], settings: ClickSettings) -> dict[str, Any]:
    """Mean Dice after the box and 1/3/5 clicks, NoC per threshold, timings, for one model."""
    if not results:
        raise ValueError("no evaluated objects to summarise")
    d = np.array([r.dice for r in results])
    row: dict[str, Any] = {"model": results[0].model, "objects": len(results)}
    for k, key in ((0, "dice_box"), (1, "dice_1"), (3, "dice_3"), (5, "dice_5")):
        row[key] = float(d[:, min(k, d.shape[1] - 1)].mean()) if k < d.shape[1] else float("nan")
    cap = settings.max_clicks
    for t in settings.thresholds:
        nocs = [r.noc(t, cap) for r in results]
        row[f"noc{round(t * 100)}"] = float(np.mean(nocs))
        row[f"failed{round(t * 100)}"] = sum(1 for r in results if all(v < t for v in r.dice))
    row["interaction_s"] = float(np.mean([s for r in results for s in r.interaction_s]))
    row["embed_s"] = float(np.mean([r.embed_s for r in results]))
    row["curve"] = d.mean(0).tolist()
    return row


def format_table(rows: Sequence[dict[str, Any]], max_clicks: int) -> str:
    """Plain-text table of summary rows (``curve`` left out); NoC capped at ``max_clicks``."""
    keys = [k for k in rows[0] if k != "curve"]
    cells = [[_fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.append(f"NoC: corrective clicks after the box, capped at {max_clicks} (failedNN counts)")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_csv(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], overwrite: bool = False
) -> Path:
    """Write dict rows as CSV atomically (lists are joined with ``;``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: ";".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v for k, v in r.items()}
        )
    return write_bytes_atomic(Path(path), buf.getvalue().encode(), overwrite)


def per_object_rows(results: Sequence[ObjectResult], settings: ClickSettings) -> list[dict]:
    """One CSV row per simulated object slice (Dice curve, NoC, mean interaction time)."""
    return [
        {
            "model": r.model,
            "case": r.case,
            "label": r.label,
            "z": r.z,
            **{f"noc{round(t * 100)}": r.noc(t, settings.max_clicks) for t in settings.thresholds},
            "interaction_s": float(np.mean(r.interaction_s)),
            "embed_s": r.embed_s,
            "dice": r.dice,
        }
        for r in results
    ]


def plot_curves(
    path: str | os.PathLike, curves: dict[str, Sequence[float]], overwrite: bool = False
) -> Path:
    """PNG of mean Dice (y, 0..1) against clicks after the box (x), one line per model."""
    from .plots import line_plot

    series = {name: (list(range(len(c))), [float(d) for d in c]) for name, c in curves.items()}
    return line_plot(path, series, "clicks after the box", "mean Dice", overwrite=overwrite)
