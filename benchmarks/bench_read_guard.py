"""What the hostile-input checks of ``read_volume`` cost on honest files.

For one CT-sized volume (default 512 x 512 x 100) written in each format, prints the median
time of ``read_volume`` with its checks (header claim vs bytes on disk, NaN/Inf in NIfTI read
from the file) against ``read_volume`` with those two checks switched off, in the same run,
alternating the two. The float32 NIfTI pays an extra read of its data (to see NaN/Inf that
SimpleITK zeroes); zlib MetaImage and gzip NRRD whose trailer is not trusted pay an extra
decompression (streamed, flat memory); int16 files pay only the header parse.

    .venv-test/bin/python benchmarks/bench_read_guard.py [--shape 100 512 512] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import napari_sam_med.volume.io as vio
from napari_sam_med.volume.io import read_volume

GUARDS = (vio.check_claimed_size, vio.nifti_nonfinite_mask)


def _unguarded(path: Path) -> None:
    vio.check_claimed_size, vio.nifti_nonfinite_mask = (lambda *a: None), (lambda *a: None)
    try:
        read_volume(path, allow_nonfinite=False)
    finally:
        vio.check_claimed_size, vio.nifti_nonfinite_mask = GUARDS


def _median_pair(path: Path, repeat: int) -> tuple[float, float]:
    ours, plain = [], []
    pair = ((lambda: read_volume(path), ours), (lambda: _unguarded(path), plain))
    for k in range(repeat):
        for fn, out in pair[:: 1 if k % 2 else -1]:  # alternate which goes first
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(plain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(100, 512, 512), help="z y x")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ct = (rng.normal(0, 200, args.shape)).astype(np.int16)
    cases = [("ct.nii.gz", ct, True), ("ct_f32.nii.gz", ct.astype(np.float32), True),
             ("ct_f32.nii", ct.astype(np.float32), False), ("ct.nrrd", ct, True),
             ("ct.mha", ct, True), ("ct_raw.mha", ct, False)]  # fmt: skip
    print(f"shape (z, y, x) {tuple(args.shape)}, median of {args.repeat}; machine shared/loaded")
    print(f"{'file':16s} {'guarded s':>10s} {'unguarded s':>12s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as d:
        for name, arr, compress in cases:
            path = Path(d) / name
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), compress)
            ours, plain = _median_pair(path, args.repeat)
            print(f"{name:16s} {ours:10.3f} {plain:12.3f} {ours / plain:6.2f}")


if __name__ == "__main__":
    main()
