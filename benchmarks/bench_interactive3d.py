"""The 3D interactive benchmark on the dev data: prints the table (and the baseline check).

Runs ``sam-med evaluate --mode 3d`` (``napari_sam_med.bench3d``) on the fixed patient split of
the dev pool, or, with ``--from-run DIR``, prints the tables of a run that already exists
(finished or not). Besides the summary it prints each case's Dice after every step and, for
the cases that ``../shared/data/REFERENCE.md`` lists, the CVPR 2024 procedure's Dice next to
the published reference figure.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_interactive3d.py \\
        --models lite_medsam --out-dir /work/runs/bench3d_lite --threads 2
    .venv/bin/python benchmarks/bench_interactive3d.py --from-run /work/runs/bench3d_lite

Other options go to ``sam-med evaluate`` unchanged (e.g. ``--cases 2 --starts box3d``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from napari_sam_med.bench3d.report import format_table, summarise
from napari_sam_med.cli import main as sam_med

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "REFERENCE.md"
POOL = REPO / "training" / "splits" / "dev_pool.csv"
SPLIT = REPO / "training" / "splits" / "dev_v1.json"


def reference_dice(path: Path) -> dict[str, float]:
    """``{"STS_004/CT": 0.787, ...}`` from the tables of REFERENCE.md (case -> Dice)."""
    out = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"(STS_\d+)_(CT|MR_T1)", cells[0]) if len(cells) >= 4 else None
        if m:
            out[f"{m.group(1)}/{m.group(2)}"] = float(cells[-2] if len(cells) == 5 else cells[-1])
    return out


def markdown(rows: list[dict], steps: int) -> str:
    """The summary rows as a Markdown table (Dice per step, NSD at the start and the end)."""
    keys = ["model", "start", "group", "n", *(f"dice_{k}" for k in range(steps + 1))]
    keys += list(dict.fromkeys(["nsd_0", f"nsd_{steps}", "dice_auc", "s_start", "s_click"]))
    cell = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def print_tables(run: Path, as_markdown: bool = False) -> None:
    lines = (run / "cases.jsonl").read_text().splitlines() if (run / "cases.jsonl").exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a record cut short by a killed run
            continue
    latest = {(r["model"], r["case"], r["start"]): r for r in records}
    records = list(latest.values())
    steps = max((len(r.get("dice", [])) for r in records), default=1) - 1
    print(f"{run}: {len({r['case'] for r in records})} cases, {len(records)} runs\n")
    rows = summarise(records, steps)
    print(markdown(rows, steps) if as_markdown else format_table(rows, steps))
    print("\nper case: Dice after each step")
    for r in sorted(records, key=lambda r: (r["case"], r["model"], r["start"])):
        curve = " ".join(f"{d:.3f}" for d in r.get("dice", [])) or r.get("error", "")
        mod = r["modality"] or "?"
        print(f"  {r['case']:16s} {mod:2s} {r['model']:22s} {r['start']:6s} {curve}")
    ref = reference_dice(REFERENCE)
    base = [r for r in records if r.get("baseline") and r["case"] in ref and r.get("dice")]
    if base:
        print(f"\nCVPR 2024 procedure vs {REFERENCE.name} (same weights)")
        for r in base:
            d, want = r["dice"][0], ref[r["case"]]
            print(f"  {r['case']:16s} ours {d:.4f}  reference {want:.4f}  diff {d - want:+.4f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-run", type=Path, help="print the tables of an existing run folder")
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench3d"), help="run folder")
    p.add_argument("--models", nargs="+", default=["lite_medsam"])
    p.add_argument("--group", default="val", choices=("train", "val"))
    p.add_argument("--markdown", action="store_true", help="print the summary as Markdown")
    args, rest = p.parse_known_args()
    if args.from_run is None:
        if not REFERENCE.parent.is_dir():
            sys.exit(f"{REFERENCE.parent} is not present beside the checkout; nothing to measure")
        argv = ["evaluate", str(POOL), "--mode", "3d", "--models", *args.models,
                "--split", str(SPLIT), "--group", args.group, "--out-dir", str(args.out_dir),
                *rest]  # fmt: skip
        code = sam_med(argv)
        if code == 2:
            return code
    print_tables(args.from_run or args.out_dir, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
