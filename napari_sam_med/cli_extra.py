"""Data-engine sub-commands of ``sam-med``: ``evaluate``, ``export`` and ``replay``.

Commands::

    sam-med evaluate DATASET --models lite_medsam my_finetune.pt --out-dir eval/
    sam-med export --out-dir DS --pair IMG LABEL [--pair ...] | --session SESSION.json ...
    sam-med replay SESSION.json [--image IMG] --checkpoint my_finetune.pt --out DIR

``DATASET`` is an MSD ``dataset.json`` (or its folder) or a folder of image/label pairs.
See ``docs/data_engine.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    """Add ``evaluate``, ``export`` and ``replay`` to the ``sam-med`` sub-parsers.

    Args:
        sub: the sub-parsers action of ``sam-med``.
        common: parent parser with ``-v`` / ``--debug``.
        model: parent parser with ``--model``, ``--device``, ``--preset``, ``--modality``...
    """
    e = sub.add_parser(
        "evaluate", parents=[model], help="compare checkpoints with simulated clicks"
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
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", parents=[common], help="write an MSD-style training set")
    x.add_argument("--out-dir", type=Path, required=True, help="dataset folder to write")
    x.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"),
                   help="image and label files (repeat)")  # fmt: skip
    x.add_argument("--session", type=Path, action="append", metavar="JSON",
                   help="saved plugin session (repeat)")  # fmt: skip
    x.add_argument("--label-name", action="append", metavar="VALUE=NAME",
                   help="name of a label value, e.g. 1=sarcoma (repeat)")  # fmt: skip
    x.add_argument("--name", default="napari-sam-med", help="dataset name in dataset.json")
    x.add_argument("--modality", default=None, help="CT or MR for dataset.json")
    x.add_argument("--overwrite", action="store_true", help="replace cases already exported")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser(
        "replay", parents=[model], help="re-run a plugin session's prompts with another model"
    )
    r.add_argument("session", type=Path, help="session log (.session.json) saved by the plugin")
    r.add_argument("--image", help="the session's image (default: the path in the log)")
    r.add_argument("--checkpoint", help="model file (e.g. a fine-tune); official weights "
                   "need --model vit_b/vit_l/vit_h/medsam_vit_b")  # fmt: skip
    r.add_argument("--labels", type=Path, help="logged labels (default: saved beside the log)")
    r.add_argument("--out", type=Path, default=Path("replay"), help="folder for labels + CSV")
    r.set_defaults(func=cmd_replay)


def _model_name(spec: str) -> str:
    p = Path(spec)
    return p.stem if p.suffix else spec


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``sam-med evaluate``: Dice vs clicks, NoC@85/90 and timings for each model."""
    from tqdm import tqdm

    from .backends import load_model
    from .device import resolve_device
    from .evaluate import (
        ClickSettings,
        evaluate_model,
        format_table,
        per_object_rows,
        plot_curves,
        summarise,
        write_csv,
    )
    from .export import discover_cases

    specs = args.models or [args.model]
    names = [_model_name(s) for s in specs]
    if len(set(names)) != len(names):
        names = [f"{i + 1}:{n}" for i, n in enumerate(names)]
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
        bar = tqdm(desc=name, unit="object", disable=args.no_progress)
        results = evaluate_model(
            model, cases, settings, name, args.preset, on_object=lambda _r, b=bar: b.update(1)
        )
        bar.close()
        rows.append(summarise(results, settings))
        objects += per_object_rows(results, settings)
        del model
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    write_csv(out / "objects.csv", objects)
    plot_curves(out / "dice_vs_clicks.png", {r["model"]: r["curve"] for r in rows})
    print(f"{len(cases)} cases, {rows[0]['objects']} object slices, device {device}")
    print(format_table(rows, settings.max_clicks))
    print(f"wrote {out / 'summary.csv'}, {out / 'objects.csv'}, {out / 'dice_vs_clicks.png'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``sam-med export``: image/label pairs or plugin sessions -> MSD-style dataset."""
    from .export import ExportItem, export_dataset, item_from_session, parse_label_names

    names = parse_label_names(args.label_name)
    items = [ExportItem(image, label) for image, label in args.pair or []]
    items += [item_from_session(p) for p in args.session or []]
    if not items:
        raise ValueError("command line: give --pair IMAGE LABEL or --session LOG.json")
    meta = export_dataset(items, args.out_dir, args.name, args.modality, names, args.overwrite)
    labels = ", ".join(f"{k}={v}" for k, v in meta["labels"].items() if k != "0") or "unnamed"
    print(f"{args.out_dir}: exported {len(items)} cases; dataset has {meta['numTraining']} "
          f"({labels})")  # fmt: skip
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """``sam-med replay``: the session's objects from their logged prompts with a model, and
    the per-object Dice between the logged and the replayed masks."""
    from tqdm import tqdm

    from .build import build_sam
    from .device import resolve_device
    from .evaluate import write_csv
    from .export import case_name
    from .volume.io import read_volume, write_labels
    from .volume.segment import resolve_preset
    from .volume.session_log import (
        compare_labels,
        final_objects,
        labels_beside,
        load_session_log,
        replay_objects,
    )
    from .volume.slices import SliceSegmenter

    log = load_session_log(args.session)
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
    logged_path = args.labels or labels_beside(args.session)
    logged = read_volume(logged_path).array if logged_path else None
    spec, ckpt = args.model, args.checkpoint
    if ckpt and args.model == "lite_medsam":  # the default: --checkpoint is one of our files
        spec, ckpt = ckpt, None
    model = build_sam(spec, checkpoint=ckpt, device=resolve_device(args.device))
    preset = resolve_preset(args.preset or log.get("preset") or None, args.modality, vol)
    seg = SliceSegmenter(model, vol.array, preset, spacing=vol.spacing)
    state = final_objects(log)
    bar = tqdm(desc="replay", unit="slice", disable=args.no_progress)
    steps = replay_objects(state, seg)
    result = drive(steps, lambda p: (bar.set_postfix_str(f"object {p.label}"), bar.update(1)))
    bar.close()
    empty = logged if logged is not None else 0 * result.labels
    rows = compare_labels(state, empty, result)
    if logged is None:
        for row in rows:
            row["logged_voxels"] = row["dice"] = None
    case = case_name(image)
    args.out.mkdir(parents=True, exist_ok=True)
    out_labels = write_labels(result.labels, vol, args.out / f"{case}_replay.nii.gz")
    print(f"{args.session}: {len(rows)} committed objects replayed with {spec} ({preset})")
    for row in rows:
        dice = "n/a" if row["dice"] is None else f"{row['dice']:.3f}"
        why = result.skipped.get(row["label"], "")
        print(f"  {row['label']:>3} {row['name'][:24]:<24} Dice {dice}  {why}".rstrip())
    if rows:
        write_csv(args.out / f"{case}_replay_dice.csv", rows)
    if logged is None:
        print("no logged labels found beside the log (use --labels); Dice not computed")
    print(f"wrote {out_labels}" + (f" and {args.out / f'{case}_replay_dice.csv'}" if rows else ""))
    return 0


def drive(steps, on_step):
    """Run a generator to its end, calling ``on_step`` with each yielded value; returns its
    return value."""
    while True:
        try:
            on_step(next(steps))
        except StopIteration as stop:
            return stop.value
