"""Training curve of a run folder as a PNG: validation Dice against steps (and the loss).

    python -m training.curve RUN_DIR --out docs/images/sam_med_lite_v1_curve.png

Reads ``RUN_DIR/metrics.jsonl``; plots every ``val/dice_*`` metric that is not per label, and
the training loss averaged over each logging window scaled into the same 0..1 axis (divided
by its first value).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_sam_med.plots import line_plot

SHOWN = ("dice_box", "dice_box_click1", "dice_box_click5", "dice_point", "dice_prop")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a line that does not parse is skipped)."""
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def curve_series(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """``{name: (steps, values)}`` for the validation metrics and the relative loss."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name in SHOWN:
        pts = [(r["step"], r[f"val/{name}"]) for r in records if f"val/{name}" in r]
        if pts:
            series[name] = ([p[0] for p in pts], [p[1] for p in pts])
    loss = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    if loss:
        first = loss[0][1] or 1.0
        series["loss / first"] = ([p[0] for p in loss], [p[1] / first for p in loss])
    return series


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plot a training run's curve")
    p.add_argument("run_dir")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    series = curve_series(read_metrics(args.run_dir))
    print(line_plot(args.out, series, "training step", "validation Dice"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
