"""``sam-med auto``: automatic masks slice by slice, linked into 3D labels (one image or a
batch with QC PNGs and a report).

    sam-med auto IMAGE -o OUT.nii.gz
    sam-med auto FOLDER --out-dir D
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..options import load_model


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``auto`` (with ``parents``: model, volume and output options)."""
    a = sub.add_parser(
        "auto", parents=parents, help="automatic masks, slice by slice, as labels"
    )
    a.add_argument("images", nargs="+", help="image files, DICOM folders or folders of volumes")
    a.add_argument("-o", "--output", help="label file to write (one image)")
    a.add_argument("--out-dir", help="batch: labels, QC PNGs and auto_report.json/.csv here")
    a.add_argument("--slices", nargs=2, type=int, metavar=("Z0", "Z1"), help="inclusive range")
    a.add_argument("--points-per-side", type=int, default=12, help="grid of prompts per side")
    a.add_argument("--prompt-type", choices=("auto", "points", "boxes"), default="auto",
                   help="auto: boxes for MedSAM/LiteMedSAM, points for SAM")  # fmt: skip
    a.add_argument("--pred-iou-thresh", type=float, help="default 0.8 boxes / 0.88 points")
    a.add_argument("--stability-thresh", type=float, help="default 0.8 boxes / 0.95 points")
    a.add_argument("--link-iou", type=float, default=0.3, help="IoU joining masks across slices")
    a.add_argument("--min-voxels", type=int, default=20, help="drop smaller 3D objects")
    a.set_defaults(func=cmd_auto)


def cmd_auto(args: argparse.Namespace) -> int:
    """``sam-med auto``: automatic masks slice by slice, linked into 3D labels (one or a batch)."""
    from functools import partial

    from ...amg import settings_for_model
    from ...outputs import check_output
    from ...volume.auto import find_volumes, run_auto_batch, segment_automatic
    from ...volume.io import write_labels
    from ...volume.segment import resolve_preset
    from ..progress import LazyBar

    if bool(args.output) == bool(args.out_dir):
        raise SystemExit("sam-med auto: give -o FILE (one image) or --out-dir DIR (a batch)")
    if args.output:
        check_output(args.output, args.overwrite)
    images = find_volumes(args.images)
    if not images:
        raise SystemExit(f"sam-med auto: no volumes found in {args.images}")
    if args.output and len(images) != 1:
        raise SystemExit(f"sam-med auto: -o takes one image, found {len(images)}; use --out-dir")
    model = load_model(args)
    amg = settings_for_model(
        model.config.name, args.prompt_type, args.pred_iou_thresh, args.stability_thresh
    )
    bar = LazyBar(args.no_progress, desc="slices", unit="slice")

    def on_progress(ev) -> None:
        bar.progress(ev.done, ev.total)

    segment = partial(
        segment_automatic, slices=args.slices, link_iou=args.link_iou,
        min_voxels=args.min_voxels, on_progress=on_progress,
        points_per_side=args.points_per_side, **amg,
    )  # fmt: skip

    def preset_for(vol) -> str:
        return resolve_preset(args.preset, args.modality, vol)

    if args.output:
        from ...volume.io import read_volume

        vol = read_volume(images[0], args.series_uid, args.component,
                          nonfinite_fill=args.nonfinite_fill)  # fmt: skip
        labels = segment(model, vol, preset_for(vol))
        bar.close()
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_labels(labels, vol, args.output, overwrite=args.overwrite)
        print(f"{args.output}: {int(labels.max())} objects, {int((labels > 0).sum())} voxels")
        return 0
    report = run_auto_batch(
        model, images, args.out_dir, segment, preset_for,
        on_case=lambda i, n, name: bar.describe(f"{name} ({i + 1}/{n})"),
        overwrite=args.overwrite, nonfinite_fill=args.nonfinite_fill,
    )  # fmt: skip
    bar.close()
    for r in report:
        objs = r.get("objects", [])
        print(f"{r['case']}: {r['status']}, {len(objs)} objects, {r['seconds']} s {r['error']}")
    print(f"report: {Path(args.out_dir) / 'auto_report.csv'}")
    return 0 if all(r["status"] != "error" for r in report) else 1
