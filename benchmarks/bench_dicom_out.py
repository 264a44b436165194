"""DICOM SEG and RTSTRUCT for a 512x512x300 CT with 3 objects: time, peak memory, round trip.

A synthetic CT series (300 slices of 512 x 512, int16 HU, pydicom files) and a label map with
three objects (1.3 mL to ~90 mL) are made in a temporary folder. For each writer a fresh
process reads the series and the labels, then writes the SEG (highdicom) or the RTSTRUCT
(pydicom + skimage contours); it prints the seconds of the write call, the seconds including
reading the series, and the process's peak resident set size (``ru_maxrss``, the whole
process). Then the SEG is read back and compared voxel for voxel with the NIfTI written from
the same labels, and each RTSTRUCT ROI is rasterised back onto the series (Dice per object).

    .venv/bin/python benchmarks/bench_dicom_out.py [--slices 300] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_sam_med.metrics import dice

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
NAMES = {1: "large mass", 2: "node", 3: "small nodule"}


def make_case(folder: Path, shape: tuple[int, int, int]) -> None:
    """Write the CT series and ``labels.npy`` (three ellipsoids) into ``folder``."""
    from dicom_fakes import ct_phantom, write_ct_series

    write_ct_series(folder / "ct", ct_phantom(shape), spacing=(0.8, 0.8, 2.0))
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    labels = np.zeros(shape, np.uint8)
    f = nx / 512  # radii in pixels at 512 x 512: 45, 25 and 8 (about 90, 15 and 1.1 mL)
    spheres = ((1, nz * 0.5, ny * 0.5, nx * 0.3, 45 * f),  # label, centre z, y, x, radius
               (2, nz * 0.55, ny * 0.55, nx * 0.7, 25 * f),
               (3, nz * 0.4, ny * 0.3, nx * 0.5, 8 * f))
    for k in range(nz):
        for value, cz, cy, cx, r in spheres:
            dz = (k - cz) * 2.0 / 0.8 * f  # slices are 2 mm, pixels 0.8 mm
            disk = (y - cy) ** 2 + (x - cx) ** 2 + dz**2 <= r**2
            labels[k][disk & (labels[k] == 0)] = value
    np.save(folder / "labels.npy", labels)


def child(kind: str, folder: Path) -> None:
    """Read the series and labels, write one object, print JSON with time and peak RSS."""
    from napari_sam_med.volume.dicom_seg import SegmentInfo, default_segments, write_seg
    from napari_sam_med.volume.io import read_volume
    from napari_sam_med.volume.rtstruct_out import write_rtstruct

    t0 = time.perf_counter()
    vol = read_volume(folder / "ct")
    labels = np.load(folder / "labels.npy")
    segments = [SegmentInfo(s.label, NAMES[s.label], s.color) for s in default_segments(labels)]
    writer = write_seg if kind == "seg" else write_rtstruct
    t1 = time.perf_counter()
    writer(labels, vol, folder / f"{kind}.dcm", segments, overwrite=True)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"write_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mb": peak}))


def round_trip(folder: Path) -> None:
    from napari_sam_med.volume.dicom import read_rtstruct
    from napari_sam_med.volume.dicom_seg_read import read_seg
    from napari_sam_med.volume.io import read_volume, write_labels

    vol = read_volume(folder / "ct")
    labels = np.load(folder / "labels.npy")
    nifti = read_volume(write_labels(labels, vol, folder / "labels.nii.gz")).array
    seg = read_seg(folder / "seg.dcm", vol)
    print(f"SEG read back vs NIfTI: {int((seg.labels != nifti).sum())} differing voxels "
          f"(of {nifti.size}); names {seg.names}")  # fmt: skip
    ml = float(np.prod(vol.spacing)) / 1000
    for value, name in NAMES.items():
        truth = labels == value
        back = read_rtstruct(folder / "rtstruct.dcm", vol, name).astype(bool)
        d = dice(truth, back)
        print(f"RTSTRUCT {name!r}: {truth.sum() * ml:.2f} mL, Dice rasterised back {d:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--child", choices=("seg", "rtstruct"), help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.folder)
        return
    shape = (args.slices, args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_case(folder, shape)
        print(f"case {shape} (z, y, x) with 3 objects made in {time.perf_counter() - t0:.1f} s")
        for kind in ("seg", "rtstruct"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--folder", tmp],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            size = (folder / f"{kind}.dcm").stat().st_size / 1e6
            print(f"{kind:8s}: write {r['write_s']:.2f} s (with reading the series "
                  f"{r['total_s']:.2f} s), peak RSS {r['peak_rss_mb']:.0f} MB (whole process), "
                  f"file {size:.1f} MB")  # fmt: skip
        round_trip(folder)
    print("reproduce: python benchmarks/bench_dicom_out.py  (the machine may be shared/loaded)")


if __name__ == "__main__":
    main()
