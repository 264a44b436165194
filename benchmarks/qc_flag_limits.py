"""Choose a model's QC limits: how many slices of a 3D box start each (min IoU, min stability)
pair flags, and how good the flagged and the other slices really are.

For every case of a split group, each model runs the 3D benchmark's ``box3d`` start; every
propagated slice gives (predicted IoU, stability score, Dice with the truth). Prints, per model
and pair, the share of slices flagged and the mean Dice of flagged and unflagged slices. The
pair of a new model is chosen to flag as many slices as LiteMedSAM's 0.75/0.85 flag for
LiteMedSAM (the QC the users know), with the flagged slices as bad as possible; it ships in the
model's file (``python -m training.ship --engine '{"qc_min_iou": ..., "qc_min_stability": ...}'``).

    python benchmarks/qc_flag_limits.py lite_medsam sam_med_lite \
        --split training/splits/dev_v1_fit.json --group val [--cache-dir /tmp/emb]

Run it on training patients only.
"""

from __future__ import annotations

import argparse

import numpy as np
from box_start_slices import box_start
from dev_cases import add_split_arguments, split_cases

from napari_sam_med import build_sam
from napari_sam_med.bench3d.clicks import box3d_of
from napari_sam_med.bench3d.runner import load_subject
from napari_sam_med.metrics import dice
from napari_sam_med.volume.slices import QC_LIMITS, SliceSegmenter

PAIRS = [QC_LIMITS] + [(i, s) for i in (0.6, 0.7, 0.75, 0.8) for s in (0.2, 0.4, 0.6)]


def slice_scores(model, cases, cache) -> np.ndarray:
    """``(N, 3)``: predicted IoU, stability and true Dice of every slice of every box start."""
    rows = []
    for case in cases:
        sub = load_subject(case)
        seg = SliceSegmenter(model, sub.image.array, sub.preset, cache, spacing=sub.image.spacing)
        obj = box_start(seg, box3d_of(sub.gt))
        rows += [(p.iou, p.stability, dice(p.mask, sub.gt[z])) for z, p in obj.slices.items()]
        cache.clear_memory()
    return np.asarray(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    add_split_arguments(p)
    args = p.parse_args(argv)
    cases, cache = split_cases(args)
    for name in args.models:
        a = slice_scores(build_sam(name, device="cpu"), cases, cache)
        print(f"{name}: {len(a)} slices of {len(cases)} box starts; median predicted IoU "
              f"{np.median(a[:, 0]):.2f}, stability {np.median(a[:, 1]):.2f}")  # fmt: skip
        for min_iou, min_stab in PAIRS:
            f = (a[:, 0] < min_iou) | (a[:, 1] < min_stab)
            bad = a[f, 2].mean() if f.any() else float("nan")
            good = a[~f, 2].mean() if (~f).any() else float("nan")
            print(f"  {min_iou:.2f}/{min_stab:.2f}: flags {f.mean():.2f} of the slices; "
                  f"Dice flagged {bad:.3f}, others {good:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
