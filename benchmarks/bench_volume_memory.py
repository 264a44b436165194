"""Peak memory to segment one tumour in a 512x512x300 CT volume with the default model.

A synthetic int16 CT (body, organs, a 3 cm lesion; HU) is written to a NIfTI file, then a fresh
process reads it, builds LiteMedSAM, and segments the lesion from its 3D box with lazy
embeddings (only the slices inside the box are embedded, with no disk cache). It prints the
peak resident set size (``ru_maxrss``) of that process, the number of slices embedded, and,
as a baseline in the same run, the peak RSS of a process that only reads the volume and builds
the model.

    .venv/bin/python benchmarks/bench_volume_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_cases import box3d_of  # noqa: E402

SHAPE = (300, 512, 512)  # z, y, x
LESION = (150, 260, 300, 15)  # z, y, x centre and radius in voxels (1 mm in-plane, 2 mm slices)


def make_volume(path: Path) -> list[int]:
    import SimpleITK as sitk

    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    vol = np.full(SHAPE, -1000, np.int16)
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1
    vol[np.broadcast_to(body, SHAPE)] = 40
    organ = ((y - 250) / 90.0) ** 2 + ((x - 300) / 110.0) ** 2 <= 1
    vol[np.broadcast_to(organ, SHAPE)] = 60
    cz, cy, cx, r = LESION
    lesion = ((z - cz) / (r / 2)) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / r) ** 2 <= 1
    vol[lesion] = 5
    vol += np.random.default_rng(0).normal(0, 8, SHAPE).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(path), useCompression=True)
    return box3d_of(lesion)


def child(path: str, box: list[int], segment: bool) -> None:
    import torch

    torch.set_num_threads(2)
    from napari_sam_med import build_sam
    from napari_sam_med.volume.cache import EmbeddingCache
    from napari_sam_med.volume.io import read_volume
    from napari_sam_med.volume.objects import ObjectSegmentation
    from napari_sam_med.volume.propagate import Propagator, run
    from napari_sam_med.volume.slices import SliceSegmenter

    t = time.perf_counter()
    vol = read_volume(path)
    model = build_sam("lite_medsam", device="cpu")
    out = {"voxels": 0, "embedded": 0}
    if segment:
        seg = SliceSegmenter(
            model, vol.array, "ct_soft_tissue", EmbeddingCache(None), spacing=vol.spacing
        )
        obj = ObjectSegmentation(1)
        run(Propagator(seg).box3d(obj, box))
        out = {"voxels": obj.voxel_count(), "embedded": seg.encoder_calls}
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct_512x512x300.nii.gz"
        box = make_volume(path)
        print(f"volume {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} (x, y, z) int16, lesion box3d {box}")
        res = {}
        for name, seg in (("read + build only", "0"), ("segment one tumour", "1")):
            cmd = [sys.executable, __file__, "--child", str(path), json.dumps(box), seg]
            res[name] = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            r = res[name]
            print(
                f"{name:20s}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s, "
                f"slices embedded {r['embedded']} of {SHAPE[0]}, voxels {r['voxels']}"
            )
        seg = res["segment one tumour"]["peak_rss_mb"]
        print(
            f"peak RSS to segment: {seg / 1024:.2f} GB (target <= 2.5 GB); "
            f"ratio to read+build baseline {seg / res['read + build only']['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
