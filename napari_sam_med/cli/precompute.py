"""``sam-med precompute``: fill the embedding cache for the listed images.

    sam-med precompute IMAGE [IMAGE ...] [--slices Z0 Z1] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import load_model, model_cache, slice_range


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``precompute`` (with ``parents``: model, cache and volume options)."""
    pc = sub.add_parser("precompute", parents=parents, help="fill the embedding cache")
    pc.add_argument("images", nargs="+", help="image files or DICOM folders")
    pc.add_argument("--slices", nargs=2, type=int, metavar=("Z0", "Z1"), help="inclusive range")
    pc.set_defaults(func=cmd_precompute)


def cmd_precompute(args: argparse.Namespace) -> int:
    """``sam-med precompute``: fill the embedding cache for the listed images."""
    from ..volume.io import read_volume
    from ..volume.segment import resolve_preset
    from ..volume.slices import SliceSegmenter
    from .progress import LazyBar

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
