"""``sam-med evaluate``: compare checkpoints with simulated clicks (Dice vs clicks, NoC@85/90,
timings), or with ``--mode 3d`` the 3D interactive benchmark.

    sam-med evaluate DATASET --models lite_medsam my_finetune.pt --out-dir eval/
    sam-med evaluate DATA --mode 3d --models lite_medsam my.pt --split S.json --out-dir OUT

``DATASET`` is an MSD ``dataset.json`` (or its folder) or a folder of image/label pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..options import claim_outputs


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` (with ``parents``: model and output options)."""
    e = sub.add_parser(
        "evaluate", parents=parents, help="compare checkpoints with simulated clicks"
    )
    e.add_argument("dataset", type=Path, help="MSD dataset.json (or folder) or a folder of pairs")
    e.add_argument("--models", nargs="+", metavar="MODEL",
                   help="registry names or checkpoint files (default: --model)")  # fmt: skip
    e.add_argument("--out-dir", type=Path, default=Path("evaluation"), help="CSV + PNG go here")
    e.add_argument("--max-clicks", type=int, default=20, help="clicks after the box; NoC cap")
    e.add_argument("--slices-per-object", type=int, default=1,
                   help="1 = largest-area slice; more = spread over the object")  # fmt: skip
    e.add_argument("--no-mask-input", action="store_true",
                   help="do not pass the previous logits as mask prompt")  # fmt: skip
    from ...bench3d.cli import add_arguments as add_3d_arguments

    add_3d_arguments(e)  # --mode 3d: the 3D interactive benchmark
    e.set_defaults(func=cmd_evaluate)


def _unique_names(specs: list[str]) -> list[str]:
    names = [_model_name(s) for s in specs]
    return names if len(set(names)) == len(names) else [f"{i + 1}:{n}" for i, n in enumerate(names)]


def _model_name(spec: str) -> str:
    p = Path(spec)
    return p.stem if p.suffix else spec


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``sam-med evaluate``: Dice vs clicks, NoC@85/90 and timings for each model."""
    from tqdm import tqdm

    from ...backends import load_model
    from ...device import resolve_device
    from ...evaluate import (
        ClickSettings,
        evaluate_model,
        format_table,
        per_object_rows,
        plot_curves,
        summarise,
        write_csv,
    )
    from ...export import discover_cases

    if args.mode == "3d":  # its run folder has its own rule (--overwrite / --resume)
        from ...bench3d.cli import cmd_evaluate3d

        specs = args.models or [args.model]
        return cmd_evaluate3d(args, specs, _unique_names(specs))
    out = args.out_dir
    outputs = claim_outputs(args.overwrite, out / "summary.csv", out / "objects.csv",
                            out / "dice_vs_clicks.png")  # fmt: skip
    specs = args.models or [args.model]
    names = _unique_names(specs)
    settings = ClickSettings(
        max_clicks=args.max_clicks,
        slices_per_object=args.slices_per_object,
        mask_input=not args.no_mask_input,
    )
    cases, _ = discover_cases(args.dataset)
    if args.modality:
        from dataclasses import replace

        cases = [replace(c, modality=c.modality or args.modality) for c in cases]
    device = resolve_device(args.device)
    rows, objects = [], []
    for spec, name in zip(specs, names, strict=True):
        model = load_model(spec, device=device, precision=args.precision)
        bar = tqdm(desc=name, unit="object", disable=args.no_progress, delay=0.5)
        results = evaluate_model(
            model, cases, settings, name, args.preset, on_object=lambda _r, b=bar: b.update(1)
        )
        bar.close()
        rows.append(summarise(results, settings))
        objects += per_object_rows(results, settings)
        del model
    out.mkdir(parents=True, exist_ok=True)
    write_csv(outputs[0], rows, args.overwrite)
    write_csv(outputs[1], objects, args.overwrite)
    plot_curves(outputs[2], {r["model"]: r["curve"] for r in rows}, args.overwrite)
    print(f"{len(cases)} cases, {rows[0]['objects']} object slices, device {device}")
    print(format_table(rows, settings.max_clicks))
    print(f"wrote {out / 'summary.csv'}, {out / 'objects.csv'}, {out / 'dice_vs_clicks.png'}")
    return 0
