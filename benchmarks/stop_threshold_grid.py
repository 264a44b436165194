"""Choose a model's stop thresholds (no z-range starts) from one propagation per case.

Propagation without a z-range stops at the first slice whose predicted IoU is below
``min_iou`` or whose stability score is below ``min_stability`` (``volume/stops.py``; the other
stop rules stay as they are). Slices before the stop do not depend on the thresholds, so one
propagation per (case, start) with both thresholds at 0, cut afterwards at the first slice
failing each pair, gives exactly the start's 3D Dice for every pair. Prints one table per start
(rows ``min_iou``, columns ``min_stability``): mean 3D Dice of the start (before any click).

    python benchmarks/stop_threshold_grid.py CHECKPOINT --split training/splits/dev_v1_fit.json \
        --group val [--table training/splits/dev_pool.csv] [--cache-dir /tmp/emb]

Run it on training patients only (e.g. the watched patients of ``dev_v1_fit.json``); the
chosen pair goes into the shipped file (``python -m training.ship --engine``).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from dev_cases import add_split_arguments, split_cases

from napari_sam_med import build_sam
from napari_sam_med.bench3d.clicks import start_prompt
from napari_sam_med.bench3d.runner import click_rng, load_subject
from napari_sam_med.metrics import dice
from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.propagate import PropagationSettings, Propagator
from napari_sam_med.volume.slices import SliceSegmenter

MIN_IOU = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)
MIN_STABILITY = (0.0, 0.2, 0.3, 0.4, 0.5)
STARTS = ("box2d", "point")


def kept_slices(slices: dict, key: int, min_iou: float, min_stability: float) -> set[int]:
    """The slices propagation keeps from ``key`` outwards with these thresholds."""
    keep = {key}
    for step in (1, -1):
        z = key + step
        while z in slices and slices[z].iou >= min_iou and slices[z].stability >= min_stability:
            keep.add(z)
            z += step
    return keep


def one_case(seg: SliceSegmenter, subject, start: str, seed: int) -> dict:
    """Dice of every threshold pair for one case and start."""
    gt = subject.gt
    prop = Propagator(seg, PropagationSettings(min_iou=0.0, min_stability=0.0))
    obj = ObjectSegmentation(1)
    rng = click_rng(seed, subject.case.name, start)
    key, prompt = start_prompt(start, gt, rng, subject.spacing_zyx[1:])
    obj.key_prompts = {key: prompt}
    for _ in prop.key_slices(obj):
        pass
    out = {}
    for pair in itertools.product(MIN_IOU, MIN_STABILITY):
        mask = np.zeros_like(gt)
        for z in kept_slices(obj.slices, key, *pair):
            mask[z] = obj.slices[z].mask
        out[pair] = dice(mask, gt)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="registry name or checkpoint file")
    p.add_argument("--seed", type=int, default=0)
    add_split_arguments(p)
    args = p.parse_args(argv)
    cases, cache = split_cases(args)
    model = build_sam(args.model, device="cpu")
    scores: dict[str, list[dict]] = {s: [] for s in STARTS}
    for case in cases:
        subject = load_subject(case)
        image = subject.image
        seg = SliceSegmenter(model, image.array, subject.preset, cache, spacing=image.spacing)
        for start in STARTS:
            scores[start].append(one_case(seg, subject, start, args.seed))
        cache.clear_memory()
    print(f"{args.model}: {len(cases)} cases of {args.split} ({args.group}), seed {args.seed}")
    for start in STARTS:
        print(f"\n{start}: mean 3D Dice of the start; rows min_iou, columns min_stability")
        print("       " + " ".join(f"{t:6.1f}" for t in MIN_STABILITY))
        for t1 in MIN_IOU:
            row = [np.mean([c[(t1, t2)] for c in scores[start]]) for t2 in MIN_STABILITY]
            print(f"  {t1:4.1f} " + " ".join(f"{v:6.3f}" for v in row))


if __name__ == "__main__":
    main()
