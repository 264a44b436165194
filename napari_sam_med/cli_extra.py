"""Sub-commands of ``sam-med`` beside ``segment``/``auto``: the data engine (``evaluate``,
``export``, ``replay``), ``precompute`` and ``info``, and the options and helpers they share.

Commands::

    sam-med evaluate DATASET --models lite_medsam my_finetune.pt --out-dir eval/
    sam-med evaluate DATA --mode 3d --models lite_medsam my.pt --split S.json --out-dir OUT
    sam-med export --out-dir DS --pair IMG LABEL [--pair ...] | --session SESSION.json ...
    sam-med replay SESSION.json [--image IMG] --checkpoint my_finetune.pt --out DIR

``DATASET`` is an MSD ``dataset.json`` (or its folder) or a folder of image/label pairs.
See ``docs/data_engine.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub, common: argparse.ArgumentParser, model: argparse.ArgumentParser,
                 out: argparse.ArgumentParser) -> None:  # fmt: skip
    """Add ``evaluate``, ``export`` and ``replay`` to the ``sam-med`` sub-parsers.

    Args:
        sub: the sub-parsers action of ``sam-med``.
        common: parent parser with ``-v`` / ``--debug``.
        model: parent parser with ``--model``, ``--device``, ``--preset``, ``--modality``...
        out: parent parser with ``--overwrite``.
    """
    e = sub.add_parser(
        "evaluate", parents=[model, out], help="compare checkpoints with simulated clicks"
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
    from .bench3d.cli import add_arguments as add_3d_arguments

    add_3d_arguments(e)  # --mode 3d: the 3D interactive benchmark
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", parents=[common, out], help="write an MSD-style training set")
    x.add_argument("--out-dir", type=Path, required=True, help="dataset folder to write")
    x.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"),
                   help="image and label files (repeat)")  # fmt: skip
    x.add_argument("--session", type=Path, action="append", metavar="JSON",
                   help="saved plugin session (repeat)")  # fmt: skip
    x.add_argument("--label-name", action="append", metavar="VALUE=NAME",
                   help="name of a label value, e.g. 1=sarcoma (repeat)")  # fmt: skip
    x.add_argument("--name", default="napari-sam-med", help="dataset name in dataset.json")
    x.add_argument("--modality", default=None, help="CT or MR for dataset.json")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser(
        "replay", parents=[model, out], help="re-run a plugin session's prompts with another model"
    )
    r.add_argument("session", type=Path, help="session log (.session.json) saved by the plugin")
    r.add_argument("--image", help="the session's image (default: the path in the log)")
    r.add_argument("--checkpoint", help="model file (e.g. a fine-tune); official weights "
                   "need --model vit_b/vit_l/vit_h/medsam_vit_b")  # fmt: skip
    r.add_argument("--labels", type=Path, help="logged labels (default: saved beside the log)")
    r.add_argument("--out", type=Path, default=Path("replay"), help="folder for labels + CSV")
    r.set_defaults(func=cmd_replay)


def volume_options() -> argparse.ArgumentParser:
    """Parent parser with ``--series-uid``, ``--component`` (which volume of a file) and
    ``--nonfinite-fill``."""
    v = argparse.ArgumentParser(add_help=False)
    v.add_argument("--series-uid", help="DICOM folder with several series: the one to read")
    v.add_argument("--component", type=int, metavar="K",
                   help="4D / multi-component file: the volume to read, from 0")  # fmt: skip
    v.add_argument("--nonfinite-fill", type=float, metavar="VALUE",
                   help="replace NaN/Inf voxels with VALUE (default: refuse the file)")  # fmt: skip
    return v


def output_options() -> argparse.ArgumentParser:
    """Parent parser with ``--overwrite`` (replace existing output files)."""
    o = argparse.ArgumentParser(add_help=False)
    o.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse, naming the file)")  # fmt: skip
    return o


def claim_outputs(overwrite: bool, *paths: Path) -> tuple[Path, ...]:
    """Apply the overwrite rule to a command's output files before any work; returns them."""
    from .outputs import check_output

    for path in paths:
        check_output(path, overwrite)
    return paths


def slice_range(slices: list[int] | None, depth: int | None = None) -> list[int] | None:
    """The slices of an inclusive ``--slices Z0 Z1`` (None: all); a usage error when the range
    is inverted or empty, or (with ``depth``) lies outside ``0..depth-1``."""
    if slices is None:
        return None
    z0, z1 = slices
    if z0 > z1 or z0 < 0:
        raise ValueError(
            f"command line: --slices {z0} {z1} is an empty range; expected 0 <= Z0 <= Z1 "
            "(both inclusive)"
        )
    if depth is not None and z1 >= depth:
        raise ValueError(
            f"command line: --slices {z0} {z1} is outside the volume's slices 0..{depth - 1}"
        )
    return list(range(z0, z1 + 1))


def _unique_names(specs: list[str]) -> list[str]:
    names = [_model_name(s) for s in specs]
    return names if len(set(names)) == len(names) else [f"{i + 1}:{n}" for i, n in enumerate(names)]


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

    if args.mode == "3d":  # its run folder has its own rule (--overwrite / --resume)
        from .bench3d.cli import cmd_evaluate3d

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
    """``sam-med replay``: a session's logged prompts re-run with a model; Dice vs the log."""
    from tqdm import tqdm

    from .build import build_sam
    from .device import resolve_device
    from .evaluate import write_csv
    from .export import case_name
    from .volume.io import read_volume, write_labels
    from .volume.log_replay import compare_labels, replay_objects
    from .volume.log_state import final_objects
    from .volume.segment import resolve_preset
    from .volume.session_log import labels_beside, load_session_log
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
    case = case_name(image)
    out_paths = claim_outputs(args.overwrite, args.out / f"{case}_replay.nii.gz",
                              args.out / f"{case}_replay_dice.csv")  # fmt: skip
    logged_path = args.labels or labels_beside(args.session)
    logged = read_volume(logged_path).array if logged_path else None
    spec, ckpt = args.model, args.checkpoint
    if ckpt and args.model == "lite_medsam":  # the default: --checkpoint is one of our files
        spec, ckpt = ckpt, None
    model = build_sam(spec, checkpoint=ckpt, device=resolve_device(args.device))
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


def drive(steps, on_step):
    """Run a generator to its end, calling ``on_step`` with each yielded value; returns its
    return value."""
    while True:
        try:
            on_step(next(steps))
        except StopIteration as stop:
            return stop.value


# ------------------------------------------------------ shared by cli.py, precompute, info
def load_model(args: argparse.Namespace, local_rank: int | None = None):
    """The model named by ``--model`` on ``--device`` (one GPU per torchrun rank), at
    ``--precision`` (a registry name, checkpoint file or ONNX export folder)."""
    from .backends import load_model as load_backend
    from .device import resolve_device

    device = args.device
    if local_rank is not None and device in ("auto", "cuda"):
        # one GPU per torchrun rank; CPU-only ranks keep resolve_device's choice
        if resolve_device("auto").type == "cuda":
            device = f"cuda:{local_rank}"
    precision = getattr(args, "precision", None)
    return load_backend(args.model, device=resolve_device(device), precision=precision)


def model_cache(args: argparse.Namespace):
    """The embedding cache chosen by ``--cache-dir`` / ``--no-disk-cache``."""
    from .volume.cache import EmbeddingCache, default_cache_dir

    if getattr(args, "no_disk_cache", False):
        return EmbeddingCache(None)
    return EmbeddingCache(args.cache_dir or default_cache_dir())


def cmd_precompute(args: argparse.Namespace) -> int:
    """``sam-med precompute``: fill the embedding cache for the listed images."""
    from .cli_progress import LazyBar
    from .volume.io import read_volume
    from .volume.segment import resolve_preset
    from .volume.slices import SliceSegmenter

    slice_range(args.slices)  # refuse an empty range before loading anything
    model = load_model(args)
    cache = model_cache(args)
    for path in args.images:
        vol = read_volume(path, args.series_uid, args.component,
                          nonfinite_fill=args.nonfinite_fill)  # fmt: skip
        preset = resolve_preset(args.preset, args.modality, vol)
        seg = SliceSegmenter(model, vol.array, preset=preset, cache=cache)
        todo = slice_range(args.slices, vol.array.shape[0])
        before = seg.encoder_calls
        bar = LazyBar(args.no_progress, desc=Path(path).name, unit="slice")
        done = 0
        for done, total, _z in seg.precompute(todo):
            bar.progress(done, total)
        bar.close()
        where = cache.cache_dir or "memory only"
        print(f"{path}: {done} slices cached ({seg.encoder_calls - before} computed, "
              f"preset {preset}) in {where}")  # fmt: skip
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``sam-med info``: models, devices, torch version and the cache location."""
    import torch

    from . import __version__
    from .build import CheckpointError, locate_lite_medsam_weights
    from .config import REGISTRY
    from .device import resolve_device
    from .volume.cache import default_cache_dir

    print(
        f"napari-sam-med {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}"
    )
    print("models:")
    for name, cfg in REGISTRY.items():
        note = ""
        if name == "lite_medsam":
            try:
                note = f"weights {locate_lite_medsam_weights(verify=False)}"
            except CheckpointError as exc:
                note = f"weights missing ({str(exc).splitlines()[0]})"
        elif name == "tiny":
            note = "small random model for tests"
        print(f"  {name:13s} {cfg.encoder:8s} input {cfg.img_size:4d}  {note}".rstrip())
    print("devices:")
    print("  cpu")
    for k in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        print(f"  cuda:{k} {torch.cuda.get_device_name(k)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        print("  mps")
    print(f"  auto -> {resolve_device('auto')}")
    cache = default_cache_dir()
    files = list((cache / "embeddings").rglob("*.npz")) if cache.is_dir() else []
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"cache: {cache} ({len(files)} slice embeddings, {size:.1f} MiB)")
    print("  set NAPARI_SAM_MED_CACHE to move it")
    return 0
