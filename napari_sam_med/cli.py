"""``sam-med``: batch segmentation from the command line (thin over :mod:`napari_sam_med.volume`).

Commands::

    sam-med segment IMAGE --box3d X0 Y0 Z0 X1 Y1 Z1 -o OUT.nii.gz [--qc DIR]
    sam-med segment IMAGE --text "tumour" [--text-slices Z0 Z1] --model TEXT.pt -o OUT.nii.gz
    sam-med segment --manifest cases.json --out-dir D [--resume] [--qc DIR]
    sam-med precompute IMAGE [IMAGE ...]
    sam-med auto IMAGE -o OUT.nii.gz
    sam-med info
    sam-med evaluate DATASET --models A B      (napari_sam_med.cli_extra)
    sam-med export --out-dir DS --pair IMAGE LABEL ...

Scale-out: ``torchrun --nproc_per_node N -m napari_sam_med.cli segment --manifest ...``
gives every rank every N-th case and one device; rank 0 prints the merged summary.
See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from .cli_extra import load_model, model_cache
from .config import DEFAULT_MODEL

logger = logging.getLogger(__name__)
_BOX3D = ("X0", "Y0", "Z0", "X1", "Y1", "Z1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sam-med``; returns the exit code (0 ok, 1 a case failed, 2 a usage/input error)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else (logging.INFO if args.verbose else 30)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("sam-med: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # VolumeError, CheckpointError, ManifestError, ...
        if args.debug:
            raise
        from .volume.segment import error_line

        print(f"sam-med: error: {error_line(exc)}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands segment, precompute, auto, info, evaluate, export)."""
    from .cli_onnx import add_export_onnx
    from .cli_pacs import add_output_args, add_pacs_command

    p = argparse.ArgumentParser(prog="sam-med", description="Segment Anything for CT/MRI tumours.")
    sub = p.add_subparsers(dest="command", required=True)
    common, model, cache = _parent_parsers()
    from .cli_extra import add_commands, cmd_info, cmd_precompute, output_options, volume_options

    vol, out = volume_options(), output_options()
    s = sub.add_parser(
        "segment", parents=[model, cache, vol, out], help="segment objects from prompts"
    )
    s.add_argument("image", nargs="?", help="image file or DICOM folder (or use --manifest)")
    s.add_argument("--manifest", type=Path, help="JSON manifest of cases (see docs/cli.md)")
    s.add_argument("-o", "--output", help="label file for IMAGE (.nii.gz, .nii, .nrrd, .mha)")
    s.add_argument("--out-dir", type=Path, help="folder for outputs without an explicit path")
    s.add_argument("--box3d", nargs=6, type=float, action="append", metavar=_BOX3D,
                   help="3D box, inclusive voxel indices (repeat for more objects)")  # fmt: skip
    s.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="2D box on --slice, propagated until the object ends")  # fmt: skip
    s.add_argument("--slice", type=float, help="slice (z) of --box")
    s.add_argument("--points", nargs="+", type=float, metavar="X Y Z", help="points x y z ...")
    s.add_argument("--point-labels", nargs="+", type=int, help="1 inside / 0 outside per point")
    s.add_argument("--text", help="text prompt, e.g. 'tumour' (checkpoints trained with text); "
                   "alone it searches the slices, else it joins the other prompts")  # fmt: skip
    s.add_argument("--text-slices", nargs=2, type=int, metavar=("Z0", "Z1"),
                   help="slices searched for a text-only prompt (default: all)")  # fmt: skip
    s.add_argument("--space", choices=("voxel", "world"), default="voxel",
                   help="prompt coordinates: voxel indices or LPS mm")  # fmt: skip
    s.add_argument("--qc", type=Path, metavar="DIR", help="write PNG overlay + JSON trace here")
    s.add_argument("--resume", action="store_true", help="skip cases whose output is complete")
    s.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    s.add_argument("--dist-timeout-hours", type=float, default=48.0, help=argparse.SUPPRESS)
    add_output_args(s)  # --format seg|rtstruct, --overwrite (cli_pacs)
    s.set_defaults(func=cmd_segment)

    pc = sub.add_parser(
        "precompute", parents=[model, cache, vol], help="fill the embedding cache"
    )
    pc.add_argument("images", nargs="+", help="image files or DICOM folders")
    pc.add_argument("--slices", nargs=2, type=int, metavar=("Z0", "Z1"), help="inclusive range")
    pc.set_defaults(func=cmd_precompute)

    a = sub.add_parser(
        "auto", parents=[model, vol, out], help="automatic masks, slice by slice, as labels"
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

    i = sub.add_parser("info", parents=[common], help="models, devices, cache location")
    i.set_defaults(func=cmd_info)

    add_commands(sub, common, model, out)  # evaluate, export, replay (the data engine)
    add_export_onnx(sub, common)
    add_pacs_command(sub, common, s, cmd_segment)
    return p


def _parent_parsers() -> tuple[argparse.ArgumentParser, ...]:
    """The shared option groups: ``common`` (-v, --debug), ``model`` (+ --model, --device,
    --precision/--fast, --preset, --modality, --no-progress) and ``cache`` (--cache-dir,
    --no-disk-cache)."""
    from .cli_onnx import add_speed_args

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    model = argparse.ArgumentParser(add_help=False, parents=[common])
    model.add_argument("--model", default=DEFAULT_MODEL, help="registry name/checkpoint/ONNX dir")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    add_speed_args(model)  # --precision / --fast
    model.add_argument("--preset", help="intensity preset (default: from the modality)")
    model.add_argument("--modality", help="CT or MR, to guess the preset (manifest: default)")
    model.add_argument("--no-progress", action="store_true", help="no progress bars")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-dir", type=Path, help="embedding cache (default: user cache)")
    cache.add_argument("--no-disk-cache", action="store_true", help="keep embeddings in memory")
    return common, model, cache


# ---------------------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:
    """``sam-med segment``: one image with prompts, or a manifest of cases."""
    from .outputs import check_output
    from .volume.qc import summary_table, write_json_atomic

    cases = _cases_from_args(args)
    if args.summary:  # a resumed batch rewrites its own summary
        check_output(args.summary, args.overwrite or args.resume)
    rank, world, local_rank = _dist_env()
    model = load_model(args, local_rank if world > 1 else None)
    _check_text_support(cases, model, args.model)
    if world > 1:
        _init_dist(args.dist_timeout_hours)
    mine = cases[rank::world]
    kwargs = dict(preset=args.preset, cache=model_cache(args), qc_dir=args.qc, resume=args.resume,
                  overwrite=args.overwrite, nonfinite_fill=args.nonfinite_fill)  # fmt: skip
    results = _run_with_progress(mine, model, args, kwargs, quiet=rank != 0)
    for r in results:
        r.worker = f"rank {rank}/{world}" if world > 1 else ""
    if world > 1:
        results = _gather(results)
    results.sort(key=lambda r: r.index)
    failed = [r for r in results if r.status == "failed"]
    if rank == 0:
        if args.image and failed:
            print(f"sam-med: error: {failed[0].error}", file=sys.stderr)
        else:
            print(summary_table(results))
        if args.summary:
            rows = [r.to_json() for r in results]
            write_json_atomic(args.summary, rows, args.overwrite or args.resume)
    if world > 1:
        _finish_dist()
    return 1 if failed else 0


def _cases_from_args(args: argparse.Namespace) -> list:
    from .volume.manifest import load_manifest, parse_manifest

    prompts = args.box3d or args.box or args.points or args.slice is not None or args.text
    if args.text_slices is not None and (
        args.text is None or args.box3d or args.box or args.points
    ):
        raise ValueError("command line: --text-slices goes with --text alone (no box or points)")
    if args.manifest is not None:
        if args.image or prompts or args.output or args.series_uid or args.component is not None:
            raise ValueError(
                "command line: give either --manifest or IMAGE with prompts (and --series-uid/"
                "--component), not both; a manifest names them per case"
            )
        cases = load_manifest(args.manifest, args.out_dir)
        for case in cases:
            case.modality = case.modality or args.modality
        return cases
    if not args.image:
        raise ValueError("command line: missing IMAGE (or --manifest cases.json)")
    if not prompts:
        raise ValueError(
            "command line: IMAGE needs a prompt: --box3d, --box with --slice, --points or --text"
        )
    if not (args.output or args.out_dir):
        raise ValueError("command line: IMAGE needs -o OUT.nii.gz (or --out-dir DIR)")
    objects: list[dict[str, Any]] = [{"box3d": b} for b in args.box3d or []]
    extra: dict[str, Any] = {}
    if args.box is not None or args.slice is not None:
        extra.update(box=args.box, slice=args.slice)
    if args.points is not None:
        if len(args.points) % 3:
            raise ValueError(
                f"command line: --points has {len(args.points)} numbers; expected x y z triples"
            )
        pts = [args.points[k : k + 3] for k in range(0, len(args.points), 3)]
        extra.update(points=pts, point_labels=args.point_labels or [1] * len(pts))
    elif args.point_labels is not None:
        raise ValueError("command line: --point-labels needs --points")
    if extra:
        objects.append({k: v for k, v in extra.items() if v is not None})
    if args.text is not None:
        if not objects:
            objects.append({"text_slices": args.text_slices} if args.text_slices else {})
        for obj in objects:
            obj["text"] = args.text
    for k, obj in enumerate(objects):
        obj["label"] = k + 1
    case: dict[str, Any] = {"image": args.image, "objects": objects}
    case.update({k: v for k in ("series_uid", "component") if (v := getattr(args, k)) is not None})
    if args.output:
        case["output"] = str(Path(args.output).resolve())  # -o is relative to the cwd
    if args.modality:
        case["modality"] = args.modality
    case.update({"format": args.format} if getattr(args, "format", None) else {})
    data = {"space": args.space, "cases": [case]}
    return parse_manifest(data, "command line", Path.cwd(), args.out_dir)


def _check_text_support(cases: list, model: Any, model_arg: str) -> None:
    """Refuse text prompts up front (before any output) unless the model takes them and
    its text encoder loads."""
    if not any(o.text for c in cases for o in c.objects):
        return
    from .build import CheckpointError
    from .predictor import SamPredictor

    predictor = SamPredictor(model)
    if not predictor.supports_text:
        raise CheckpointError(
            f"text prompts need a checkpoint trained with text; {model_arg} has no text-prompt "
            f"support (text_dim=None). Use --box3d, --box or --points, or a text checkpoint"
        )
    try:
        predictor.get_text_encoder()
    except ImportError as exc:
        raise CheckpointError(f"{model_arg}: {exc}") from None


def _run_with_progress(cases, model, args, kwargs, quiet: bool) -> list:
    """Run the cases with a per-case bar and a per-slice bar (tqdm, on stderr)."""
    from .cli_progress import CaseBars
    from .volume.segment import run_cases

    bars = CaseBars(len(cases), disable=args.no_progress or quiet)
    results = []
    try:
        for r in run_cases(cases, model, debug=args.debug, on_progress=bars.on_progress, **kwargs):
            results.append(r)
            failed = r.status == "failed" and len(cases) > 1
            bars.case_done(len(results), f"FAILED {r.name}: {r.error}" if failed else None)
    finally:
        bars.close()
    return results


# ----------------------------------------------------------------------- distributed
def _dist_env() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from the environment torchrun sets (0, 1, 0 alone)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world, local


def _init_dist(hours: float) -> None:
    import torch.distributed as dist

    # gloo only gathers the small per-case summaries; the models run on each rank's device.
    dist.init_process_group("gloo", timeout=timedelta(hours=hours))


def _gather(results: list) -> list:
    import torch.distributed as dist

    everything: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everything, results)
    return [r for part in everything for r in part]


def _finish_dist() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------ other commands
def cmd_auto(args: argparse.Namespace) -> int:
    """``sam-med auto``: automatic masks slice by slice, linked into 3D labels (one or a batch)."""
    from functools import partial

    from .amg import settings_for_model
    from .cli_progress import LazyBar
    from .outputs import check_output
    from .volume.auto import find_volumes, run_auto_batch
    from .volume.io import write_labels
    from .volume.segment import resolve_preset, segment_automatic

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
        from .volume.io import read_volume

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


if __name__ == "__main__":
    sys.exit(main())
