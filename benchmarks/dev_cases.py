"""The dev cases of ``../shared/data`` used by the volume benchmarks (read-only, never copied).

Each case is an image, its binary target (label > 0) and a modality; the 3D box is the
label's bounding box in inclusive voxel indices ``[x0, y0, z0, x1, y1, z1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam_med.bench3d.clicks import box3d_of  # noqa: F401 - re-exported for benchmarks
from napari_sam_med.metrics import dice  # noqa: F401 - re-exported for benchmarks (bool masks)
from napari_sam_med.volume.io import read_volume

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class DevCase:
    name: str
    modality: str
    image: Path
    label: Path

    def load(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """``(image (z, y, x) float32, target (z, y, x) bool, spacing_xyz)``."""
        img = read_volume(self.image)
        lab = read_volume(self.label)
        return img.array.astype(np.float32), lab.array > 0, img.spacing


def dev_cases(root: Path = SHARED) -> list[DevCase]:
    """The 20 cases of ``REFERENCE.md``, in its order."""
    cases: list[DevCase] = []
    for sts in ("001", "002", "003", "004", "005", "006", "007", "008", "010"):
        d = root / "ibsi_sts" / f"STS_{sts}"
        for mod, stem in (("CT", "CT"), ("MR", "MR_T1")):
            if (d / f"{stem}_image.nii.gz").exists():
                cases.append(
                    DevCase(
                        f"STS_{sts}_{stem}",
                        mod,
                        d / f"{stem}_image.nii.gz",
                        d / f"{stem}_mask.nii.gz",
                    )
                )
    pr = root / "pyradiomics"
    for name in ("brain1", "breast1"):
        cases.append(DevCase(name, "MR", pr / f"{name}_image.nrrd", pr / f"{name}_label.nrrd"))
    b = root / "brats2015" / "pat0001"
    cases.append(
        DevCase(
            "brats_pat0001_flair",
            "MR",
            b / "Flair_subtrMeanDivStd.nii.gz",
            b / "OTMultiClass.nii.gz",
        )
    )
    return [c for c in cases if c.image.exists() and c.label.exists()]


def add_split_arguments(parser) -> None:
    """The options of the scripts that run on a split group of a case table (training/)."""
    parser.add_argument("--table", default="training/splits/dev_pool.csv")
    parser.add_argument("--split", required=True, help="e.g. training/splits/dev_v1_fit.json")
    parser.add_argument("--group", default="val", choices=("train", "val"))
    parser.add_argument("--cache-dir", default=None, help="on-disk embedding cache")
    parser.add_argument("--threads", type=int, default=2)


def split_cases(args) -> tuple[list, object]:
    """``(cases of the group, an EmbeddingCache)`` from :func:`add_split_arguments`' options;
    sets the torch thread count."""
    import torch

    from napari_sam_med.bench3d.cases import load_cases, select_group
    from napari_sam_med.volume.cache import EmbeddingCache

    torch.set_num_threads(args.threads)
    cases = select_group(load_cases(args.table), args.split, args.group)
    return cases, EmbeddingCache(args.cache_dir, memory_bytes=2 * 2**30)
