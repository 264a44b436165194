"""Per-step mean Dice of 3D benchmark runs against a baseline run, and the Dice rule.

Reads the ``summary.csv`` and ``cases.csv`` that ``sam-med evaluate --mode 3d`` writes in each
run folder and prints a Markdown table per start: the mean Dice after each step (start, then
each corrective click) of every run, the change against the first run, and the largest
per-case change. The rule of issue 14: a faster precision may be the default only if
``|mean change| <= 0.005`` at every step.

    python benchmarks/compare_3d_runs.py ~/runs/issue14f/3d_fp32_box3d ~/runs/issue14f/3d_bf16_box3d
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

RULE = 0.005


def _summary(run: Path, start: str, group: str) -> list[float]:
    with open(run / "summary.csv") as fh:
        for row in csv.DictReader(fh):
            if (
                row["start"] == start
                and row["group"] == group
                and not row["model"].startswith("cvpr24")
            ):
                steps = sorted(k for k in row if k.startswith("dice_") and k[5:].isdigit())
                return [float(row[k]) for k in steps]
    raise ValueError(f"{run}/summary.csv has no row for start {start!r}, group {group!r}")


def _cases(run: Path, start: str, group: str) -> dict[str, list[float]]:
    with open(run / "cases.csv") as fh:
        return {
            r["case"]: [float(v) for v in r["dice"].split(";")]
            for r in csv.DictReader(fh)
            if r["start"] == start and r["dice"] and not r["model"].startswith("cvpr24")
            and group in ("all", r["modality"])
        }  # fmt: skip


def _label(run: Path) -> str:
    header = json.loads((run / "run.json").read_text())
    return str(header.get("precision") or run.name)


def compare(runs: list[Path], start: str, group: str) -> str:
    base, base_cases = _summary(runs[0], start, group), _cases(runs[0], start, group)
    steps = ["start"] + [f"+{k} click{'s' if k > 1 else ''}" for k in range(1, len(base))]
    lines = [f"| {start}, mean Dice ({group}) | " + " | ".join(steps) + " | rule |",
             "|---" * (len(steps) + 2) + "|"]  # fmt: skip
    lines.append(f"| {_label(runs[0])} | " + " | ".join(f"{v:.4f}" for v in base) + " | |")
    for run in runs[1:]:
        vals, cases = _summary(run, start, group), _cases(run, start, group)
        change = [b - a for a, b in zip(base, vals, strict=True)]
        worst = [
            max((cases[c][k] - base_cases[c][k] for c in cases if c in base_cases), key=abs)
            for k in range(len(base))
        ]
        ok = "met" if all(abs(c) <= RULE for c in change) else "**not met**"
        lines.append(f"| {_label(run)} | " + " | ".join(f"{v:.4f}" for v in vals) + " | |")
        lines.append("| change | " + " | ".join(f"{c:+.4f}" for c in change) + f" | {ok} |")
        lines.append("| worst case | " + " | ".join(f"{c:+.3f}" for c in worst) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders; the first is the base")
    parser.add_argument("--start", default="box3d")
    parser.add_argument("--group", default="all")
    args = parser.parse_args(argv)
    print(compare(args.runs, args.start, args.group))


if __name__ == "__main__":
    main()
