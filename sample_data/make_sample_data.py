"""Generate the project's own synthetic sample volumes (deterministic).

Writes, into ``--out`` (default: this folder):

* ``ct_phantom.nii.gz`` / ``ct_phantom_label.nii.gz``: abdomen-like CT in HU (int16),
  128 x 128 x 40 voxels (x, y, z), spacing (0.9, 0.9, 2.5) mm; label 1 = hypodense liver
  lesion, 2 = hyperdense splenic lesion.
* ``mr_phantom.nii.gz`` / ``mr_phantom_label.nii.gz``: brain-like MR (FLAIR-like contrast,
  arbitrary units, int16), 128 x 128 x 32, spacing (1, 1, 3) mm; label 1 = tumour (the
  oedema halo around it is not labelled).
* ``sample_data.json``: for each volume its files, modality, intensity preset and the tumour
  bounding boxes ``[x0, y0, z0, x1, y1, z1]`` in voxel indices, inclusive.

Run from the repository root with the package importable::

    python sample_data/make_sample_data.py
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_sam_med.volume.io import Volume, write_labels, write_volume

logger = logging.getLogger("make_sample_data")

SEED = 20261125
HERE = Path(__file__).resolve().parent
BOX_CONVENTION = "voxel indices [x0, y0, z0, x1, y1, z1], inclusive (ITK x, y, z order)"


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size ``(x, y, z)``, spacing mm ``(x, y, z)``, origin LPS mm."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def centred_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates (mm) of voxel centres relative to the grid centre, each ``(z, y, x)``."""
        pairs = zip(self.size, self.spacing, strict=True)
        axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in pairs]
        z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        return x, y, z

    def volume(self, array: np.ndarray) -> Volume:
        """Wrap ``array`` (z, y, x) with this grid's geometry (identity direction)."""
        return Volume(array, self.spacing, self.origin)


CT_GRID = Grid((128, 128, 40), (0.9, 0.9, 2.5), (-57.15, -62.15, -48.75))
MR_GRID = Grid((128, 128, 32), (1.0, 1.0, 3.0), (-63.5, -71.5, -46.5))


def ellipsoid(xyz, centre, semi) -> np.ndarray:
    """Normalised radius ``r`` (``r < 1`` inside) of an axis-aligned ellipsoid, mm in and out."""
    return np.sqrt(sum(((c - c0) / s) ** 2 for c, c0, s in zip(xyz, centre, semi, strict=True)))


def irregular(xyz, centre, semi, rng: np.random.Generator, roughness: float = 0.2) -> np.ndarray:
    """Inside-mask of an ellipsoid whose radius is modulated by a few random lobes."""
    rel = [(c - c0) / s for c, c0, s in zip(xyz, centre, semi, strict=True)]
    r = np.sqrt(sum(v**2 for v in rel)) + 1e-9
    unit = [v / r for v in rel]
    bound = np.ones_like(r)
    n_lobes = 5
    for _ in range(n_lobes):
        freq = rng.uniform(-3.0, 3.0, size=3)
        phase = rng.uniform(0.0, 2 * np.pi)
        wave = np.cos(sum(f * u for f, u in zip(freq, unit, strict=True)) + phase)
        bound += 2 * roughness / n_lobes * wave
    return r < bound


def smooth(array: np.ndarray, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing with ``sigma_mm`` on the physical grid (partial-volume look)."""
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(grid.spacing)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_mm))


def make_ct(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Abdomen-like CT phantom in HU (int16) and its lesion labels (uint8), both (z, y, x)."""
    xyz = x, y, z = CT_GRID.centred_mm()
    hu = np.full(x.shape, -1000.0)
    body = ellipsoid((x, y), (0, 3), (54, 45)) < 1
    hu[body] = -100.0  # subcutaneous fat
    hu[ellipsoid((x, y), (0, 3), (49, 40)) < 1] = 40.0  # muscle / soft tissue
    lung = (ellipsoid(xyz, (-26, 2, 68), (20, 30, 45)) < 1) | (
        ellipsoid(xyz, (26, 2, 68), (20, 30, 45)) < 1
    )
    hu[lung & body] = -820.0
    organs = [  # (centre mm, semi-axes mm, HU): liver, spleen, kidneys, aorta, bowel gas
        ((-20, -4, 4), (27, 30, 42), 60.0),
        ((30, 6, 18), (12, 16, 22), 50.0),
        ((-31, 24, -18), (9, 12, 22), 30.0),
        ((31, 24, -14), (9, 12, 22), 30.0),
        ((7, 14, 0), (5, 5, 200), 45.0),
        ((16, -24, -12), (9, 7, 8), -950.0),
    ]
    for centre, semi, value in organs:
        hu[(ellipsoid(xyz, centre, semi) < 1) & body] = value
    hu[ellipsoid((x, y), (0, 28), (9, 7)) < 1] = 700.0  # vertebral body
    hu[ellipsoid((x, y), (0, 28), (6, 4.5)) < 1] = 250.0  # cancellous bone
    hu[ellipsoid((x, y), (0, 39), (3.5, 3.5)) < 1] = 15.0  # spinal canal
    labels = np.zeros(x.shape, dtype=np.uint8)
    lesion1 = irregular(xyz, (-24, -8, 6), (11, 9, 10), rng)
    lesion2 = irregular(xyz, (30, 3, 20), (7, 6, 7.5), rng)
    hu[lesion1], labels[lesion1] = 10.0, 1
    hu[lesion2], labels[lesion2] = 105.0, 2
    hu = smooth(hu, CT_GRID, 0.6) + rng.normal(0.0, 10.0, size=hu.shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, labels, {1: "hypodense liver lesion", 2: "hyperdense splenic lesion"}


def make_mr(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Brain-like MR phantom (FLAIR-like, int16 a.u.) and its tumour label, both (z, y, x)."""
    xyz = x, y, z = MR_GRID.centred_mm()
    head = ellipsoid(xyz, (0, 0, -6), (56, 62, 58))
    signal = np.zeros(x.shape)
    signal[head < 1.0] = 260.0  # scalp
    signal[head < 0.93] = 30.0  # skull
    signal[head < 0.87] = 70.0  # CSF
    brain = head < 0.84
    azimuth = np.arctan2(y, x)
    elevation = np.arctan2(z + 6, np.hypot(x, y))
    gyri = 0.05 * np.cos(9 * azimuth) * np.cos(7 * elevation)
    signal[brain] = 380.0  # grey matter
    signal[brain & (head < 0.66 + gyri)] = 300.0  # white matter
    signal[brain & (np.abs(x) < 1.0) & (head > 0.3)] = 70.0  # falx / interhemispheric CSF
    for side in (-1, 1):
        signal[ellipsoid(xyz, (side * 7, -4, 4), (4.5, 17, 9)) < 1] = 60.0  # lateral ventricles
    centre, semi = (22, -14, 6), (12, 10, 11)
    oedema = irregular(xyz, centre, tuple(1.7 * s for s in semi), rng, roughness=0.3) & brain
    tumour = irregular(xyz, centre, semi, rng, roughness=0.35) & brain
    signal[oedema] = 560.0
    signal[tumour] = 850.0
    labels = tumour.astype(np.uint8)
    signal = smooth(signal, MR_GRID, 0.7) * (1 + 0.08 * x / 64 + 0.05 * y / 64)  # bias field
    noisy = np.hypot(signal + rng.normal(0, 12, x.shape), rng.normal(0, 12, x.shape))  # Rician
    image = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    return image, labels, {1: "tumour"}


def bounding_box(mask: np.ndarray) -> list[int]:
    """Inclusive box ``[x0, y0, z0, x1, y1, z1]`` of a non-empty ``(z, y, x)`` mask."""
    zyx = np.nonzero(mask)
    lo = [int(zyx[a].min()) for a in (2, 1, 0)]
    hi = [int(zyx[a].max()) for a in (2, 1, 0)]
    return lo + hi


def generate(out_dir: str | Path = HERE, seed: int = SEED) -> dict:
    """Write both phantoms, their labels and ``sample_data.json`` into ``out_dir``.

    Returns:
        The manifest that was written to ``sample_data.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest: dict = {"seed": seed, "box_convention": BOX_CONVENTION, "volumes": {}}
    specs = [("ct_phantom", "CT", "ct_soft_tissue", make_ct, CT_GRID)]
    specs.append(("mr_phantom", "MR", "mr", make_mr, MR_GRID))
    for name, modality, preset, make, grid in specs:
        image, labels, names = make(rng)
        reference = grid.volume(image)
        # regenerating the sample data in place is this script's job
        write_volume(reference, out / f"{name}.nii.gz", overwrite=True)
        write_labels(labels, reference, out / f"{name}_label.nii.gz", overwrite=True)
        manifest["volumes"][name] = {
            "image": f"{name}.nii.gz",
            "label": f"{name}_label.nii.gz",
            "modality": modality,
            "preset": preset,
            "size_xyz": list(grid.size),
            "spacing_xyz_mm": list(grid.spacing),
            "origin_lps_mm": list(grid.origin),
            "dtype": str(image.dtype),
            "objects": [
                {"label": lab, "name": names[lab], "box3d": bounding_box(labels == lab)}
                for lab in sorted(names)
            ],
        }
        logger.info("wrote %s and its label to %s", name, out)
    text = json.dumps(manifest, indent=2)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m[1]) + "]", text)
    (out / "sample_data.json").write_text(text + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python sample_data/make_sample_data.py [--out DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out, args.seed)


if __name__ == "__main__":
    main()
