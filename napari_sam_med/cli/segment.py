"""``sam-med segment``: one image with prompts, or a manifest of cases (optionally sharded
over torchrun ranks).

    sam-med segment IMAGE --box3d X0 Y0 Z0 X1 Y1 Z1 -o OUT.nii.gz [--qc DIR]
    sam-med segment IMAGE --text "tumour" [--text-slices Z0 Z1] --model TEXT.pt -o OUT.nii.gz
    sam-med segment --manifest cases.json --out-dir D [--resume] [--qc DIR]

Scale-out: ``torchrun --nproc_per_node N -m napari_sam_med.cli segment --manifest ...``
gives every rank every N-th case and one device; rank 0 prints the merged summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import add_output_args, load_model, model_cache

if TYPE_CHECKING:
    from ..modeling.protocol import PromptModel

logger = logging.getLogger(__name__)
_BOX3D = ("X0", "Y0", "Z0", "X1", "Y1", "Z1")


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``segment`` (with ``parents``: model, cache, volume and output options); returns
    its parser, which ``sam-med pacs segment`` copies."""
    s = sub.add_parser(
        "segment", parents=parents, help="segment objects from prompts"
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
    add_output_args(s)  # --format seg|rtstruct, --overwrite (options.py)
    s.set_defaults(func=cmd_segment)
    return s


# ---------------------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:
    """``sam-med segment``: one image with prompts, or a manifest of cases."""
    from ..outputs import check_output, write_json_atomic
    from ..volume.qc import summary_table

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
    from ..volume.manifest import load_manifest, parse_manifest

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


def _check_text_support(cases: list, model: PromptModel, model_arg: str) -> None:
    """Refuse text prompts up front (before any output) unless the model takes them and
    its text encoder loads."""
    if not any(o.text for c in cases for o in c.objects):
        return
    from ..build import CheckpointError
    from ..predictor import SamPredictor

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
    from ..volume.segment import run_cases
    from .progress import CaseBars

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
