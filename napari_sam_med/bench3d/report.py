"""Reports of a 3D benchmark: summary rows per model, start and modality; CSV, JSON, PNG.

Definitions (also written into ``summary.json``):

* ``dice_k`` / ``nsd_k``: mean over cases after step ``k`` (0 = the start, k = k clicks).
* ``dice_auc`` / ``nsd_auc``: per case, the trapezoidal area under the metric after clicks
  1..5 with unit steps (the CVPR 2025 challenge's DSC_AUC: the start is not included; the
  maximum is 4.0 for 5 clicks), then the mean over cases.
* ``final_dice`` / ``final_nsd``: after the last step.
* ``s_start`` / ``s_click``: mean wall seconds of the start and of one click (each includes
  encoder time only for slices not yet in the shared embedding cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import _fmt, write_csv
from ..metrics import auc
from ..outputs import write_json_atomic
from ..plots import line_plot
from .clicks import STARTS

GROUP_ORDER = ("CT", "MR", "all")
DEFINITIONS = {
    "dice_k/nsd_k": "mean over cases after step k (0 = the start; k = after k clicks)",
    "dice_auc/nsd_auc": "per case trapezoid over the values after clicks 1..K with unit steps "
    "(CVPR 2025 DSC_AUC; the start excluded; max K-1), mean over cases",
    "nsd": "normalised surface Dice at the tolerance, physical spacing, boundary voxels",
    "s_start/s_click": "mean wall seconds of the start / of one click, encoder time included "
    "only for slices not yet in the shared embedding cache",
}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summary_row(model: str, start: str, group: str, recs: list[dict[str, Any]], steps: int):
    """One summary row (means over ``recs``, which share model and start)."""
    row: dict[str, Any] = {"model": model, "start": start, "group": group, "n": len(recs)}
    for metric in ("dice", "nsd"):
        for k in range(steps + 1):
            vals = [r[metric][k] for r in recs if len(r[metric]) > k]
            row[f"{metric}_{k}"] = _mean(vals)
    for metric in ("dice", "nsd"):
        row[f"{metric}_auc"] = _mean([auc(r[metric][1:]) for r in recs if len(r[metric]) > 2])
    row["final_dice"] = _mean([r["dice"][-1] for r in recs])
    row["final_nsd"] = _mean([r["nsd"][-1] for r in recs])
    row["s_start"] = _mean([r["seconds"][0] for r in recs])
    row["s_click"] = _mean([s for r in recs for s in r["seconds"][1:]])
    return row


def summarise(records: Sequence[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Summary rows per (model, start, CT / MR / all), in first-seen model order; records with
    an error are left out (count them with :func:`failures`)."""
    ok = [r for r in records if not r.get("error")]
    models = list(dict.fromkeys(r["model"] for r in records))
    rows = []
    for model in models:
        for start in STARTS:
            recs = [r for r in ok if r["model"] == model and r["start"] == start]
            for group in GROUP_ORDER:
                sel = [r for r in recs if group == "all" or r["modality"] == group]
                if sel:
                    rows.append(summary_row(model, start, group, sel, steps))
    return rows


def failures(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that ended with an error."""
    return [r for r in records if r.get("error")]


def case_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record (lists joined with ``;`` when written as CSV)."""
    keys = ("model", "case", "modality", "start", "slices_in_box", "dice", "nsd", "seconds")
    rows = []
    for r in records:
        row = {k: r.get(k) for k in keys}
        ok = not r.get("error") and r.get("dice")
        row["dice_auc"] = auc(r["dice"][1:]) if ok and len(r["dice"]) > 2 else None
        row["final_dice"] = r["dice"][-1] if ok else None
        row["error"] = r.get("error") or ""
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], steps: int) -> str:
    """Plain-text table of the summary rows (Dice per step, NSD at the start and the end)."""
    keys = ["model", "start", "group", "n", *(f"dice_{k}" for k in range(steps + 1))]
    keys += ["nsd_0", f"nsd_{steps}", "dice_auc", "final_dice", "s_start", "s_click"]
    keys = list(dict.fromkeys(keys))
    cells = [["-" if r.get(k) is None else _fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def curves(rows: Sequence[dict[str, Any]], start: str, steps: int) -> dict[str, list[float]]:
    """Mean Dice per step of every model for one start (all cases), for the plot."""
    out = {}
    for r in rows:
        if r["start"] == start and r["group"] == "all":
            vals = [r[f"dice_{k}"] for k in range(steps + 1)]
            out[r["model"]] = [v for v in vals if v is not None]
    return out


def write_reports(
    out: Path, header: dict[str, Any], records: Sequence[dict[str, Any]], steps: int
) -> list[Path]:
    """``summary.csv``, ``summary.json``, ``cases.csv`` and one ``dice_vs_clicks_START.png``
    per start; returns the paths written."""
    rows = summarise(records, steps)
    written = []
    if rows:
        written.append(write_csv(out / "summary.csv", rows, overwrite=True))
    if records:
        written.append(write_csv(out / "cases.csv", case_rows(records), overwrite=True))
    summary = {
        "run": header,
        "definitions": DEFINITIONS,
        "summary": rows,
        "failures": [
            {k: r.get(k) for k in ("model", "case", "start", "error")} for r in failures(records)
        ],  # fmt: skip
        "cases": list(records),
    }
    written.append(write_json_atomic(out / "summary.json", summary, overwrite=True))
    for start in STARTS:
        lines = curves(rows, start, steps)
        if lines:
            png = out / f"dice_vs_clicks_{start}.png"
            series = {name: (list(range(len(c))), c) for name, c in lines.items()}
            written.append(
                line_plot(
                    png, series, f"clicks after the {start} start", "mean Dice", overwrite=True
                )
            )
    return written
