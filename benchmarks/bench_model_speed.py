"""Prompt -> mask and per-slice propagation time of two models on the same slices, in one run.

Both models answer from the same cached embeddings (the encoder is excluded: fine-tunes that
keep LiteMedSAM's encoder share it), interleaved round by round so that load on the machine
hits both alike. Prints the medians and the ratio (candidate / baseline).

    OMP_NUM_THREADS=1 python benchmarks/bench_model_speed.py \\
        [--models lite_medsam sam_med_lite] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from napari_sam_med.build import build_sam
from napari_sam_med.volume.io import read_volume
from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.propagate import PropagationSettings, Propagator, run
from napari_sam_med.volume.slices import SliceSegmenter

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def one_round(seg: SliceSegmenter, box3d: list[int]) -> tuple[float, float]:
    """(seconds of one box prompt on the middle slice, seconds per propagated slice)."""
    x0, y0, z0, x1, y1, z1 = box3d
    zm = (z0 + z1) // 2
    t0 = time.perf_counter()
    seg.predict(zm, box=np.array([x0, y0, x1, y1], np.float32))
    prompt = time.perf_counter() - t0
    obj = ObjectSegmentation(1)
    t0 = time.perf_counter()
    run(Propagator(seg, PropagationSettings(repropagate="box")).box3d(obj, box3d))
    return prompt, (time.perf_counter() - t0) / (z1 - z0 + 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs=2, default=["lite_medsam", "sam_med_lite"])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    image = read_volume(SAMPLE / "ct_phantom.nii.gz")
    box3d = [24, 45, 18, 47, 64, 26]  # the liver lesion of sample_data.json
    segs = {}
    for name in args.models:
        segs[name] = SliceSegmenter(build_sam(name, device="cpu"), image.array, "ct_soft_tissue")
        for z in range(box3d[2], box3d[5] + 1):
            segs[name].embedding(z)  # embeddings first: only the prompt path is timed
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in args.models}
    for _ in range(args.rounds):
        for name, seg in segs.items():
            times[name].append(one_round(seg, box3d))
    base, cand = args.models
    med = {n: [statistics.median(v[i] for v in times[n]) for i in (0, 1)] for n in times}
    for n in args.models:
        print(f"{n:14s} prompt->mask {med[n][0] * 1e3:7.1f} ms   per propagated slice "
              f"{med[n][1] * 1e3:7.1f} ms   ({args.rounds} rounds, medians)")  # fmt: skip
    print(f"ratio {cand}/{base}: prompt->mask {med[cand][0] / med[base][0]:.3f}, "
          f"per slice {med[cand][1] / med[base][1]:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
