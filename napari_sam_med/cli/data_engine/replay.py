"""``sam-med replay``: a plugin session's logged prompts re-run with another model; Dice
against the logged labels.

    sam-med replay SESSION.json [--image IMG] --checkpoint my_finetune.pt --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...config import DEFAULT_MODEL
from ..options import claim_outputs


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``replay`` (with ``parents``: model and output options)."""
    r = sub.add_parser(
        "replay", parents=parents, help="re-run a plugin session's prompts with another model"
    )
    r.add_argument("session", type=Path, help="session log (.session.json) saved by the plugin")
    r.add_argument("--image", help="the session's image (default: the path in the log)")
    r.add_argument("--checkpoint", help="model file (e.g. a fine-tune); official weights "
                   "need --model vit_b/vit_l/vit_h/medsam_vit_b")  # fmt: skip
    r.add_argument("--labels", type=Path, help="logged labels (default: saved beside the log)")
    r.add_argument("--out", type=Path, default=Path("replay"), help="folder for labels + CSV")
    r.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    """``sam-med replay``: a session's logged prompts re-run with a model; Dice vs the log."""
    from tqdm import tqdm

    from ...evaluate import write_csv
    from ...volume.io import case_name, read_volume, write_labels
    from ...volume.log_replay import compare_labels, replay_objects
    from ...volume.log_state import final_objects
    from ...volume.segment import resolve_preset
    from ...volume.session_log import labels_beside, load_session_log
    from ...volume.slices import SliceSegmenter

    log = load_session_log(args.session)
    image, vol = _session_image(args, log)
    case = case_name(image)
    out_paths = claim_outputs(args.overwrite, args.out / f"{case}_replay.nii.gz",
                              args.out / f"{case}_replay_dice.csv")  # fmt: skip
    logged_path = args.labels or labels_beside(args.session)
    logged = read_volume(logged_path).array if logged_path else None
    spec, model = _replay_model(args)
    preset = resolve_preset(args.preset or log.get("preset") or None, args.modality, vol)
    seg = SliceSegmenter(model, vol.array, preset, spacing=vol.spacing)
    state = final_objects(log)
    bar = tqdm(desc="replay", unit="slice", disable=args.no_progress)  # made as the work starts
    show = lambda p: (bar.set_postfix_str(f"object {p.label}"), bar.update(1))  # noqa: E731
    result = drive(replay_objects(state, seg), show)
    bar.close()
    rows = compare_labels(state, logged if logged is not None else 0 * result.labels, result)
    if logged is None:
        for row in rows:
            row["logged_voxels"] = row["dice"] = None
    args.out.mkdir(parents=True, exist_ok=True)
    out_labels = write_labels(result.labels, vol, out_paths[0], overwrite=args.overwrite)
    print(f"{args.session}: {len(rows)} committed objects replayed with {spec} ({preset})")
    for row in rows:
        dice = "n/a" if row["dice"] is None else f"{row['dice']:.3f}"
        why = result.skipped.get(row["label"], "")
        print(f"  {row['label']:>3} {row['name'][:24]:<24} Dice {dice}  {why}".rstrip())
    if rows:
        write_csv(out_paths[1], rows, args.overwrite)
    if logged is None:
        print("no logged labels found beside the log (use --labels); Dice not computed")
    print(f"wrote {out_labels}" + (f" and {args.out / f'{case}_replay_dice.csv'}" if rows else ""))
    return 0


def _session_image(args: argparse.Namespace, log: dict[str, Any]) -> tuple[str, Any]:
    """The image the session was recorded on (``--image`` or the logged path), read and
    checked against the logged shape: ``(path, Volume)``."""
    from ...volume.io import read_volume

    info = log.get("image") or {}
    image = args.image or info.get("path")
    if not image:
        raise ValueError(f"{args.session}: the log records no image path; give --image IMAGE")
    vol = read_volume(image)
    if info.get("shape_zyx") and list(vol.array.shape) != list(info["shape_zyx"]):
        raise ValueError(
            f"{image}: shape {list(vol.array.shape)} (z, y, x), but the session was recorded "
            f"on an image of shape {info['shape_zyx']}; pass the session's image with --image"
        )
    return image, vol


def _replay_model(args: argparse.Namespace) -> tuple[str, Any]:
    """``(model spec, model)`` of ``--model`` / ``--checkpoint``."""
    from ...build import build_sam
    from ...device import resolve_device

    spec, ckpt = args.model, args.checkpoint
    if ckpt and args.model == DEFAULT_MODEL:  # the default: --checkpoint is one of our files
        spec, ckpt = ckpt, None
    return spec, build_sam(spec, checkpoint=ckpt, device=resolve_device(args.device))


def drive(steps, on_step):
    """Run a generator to its end, calling ``on_step`` with each yielded value; returns its
    return value."""
    while True:
        try:
            on_step(next(steps))
        except StopIteration as stop:
            return stop.value
