"""Benchmark metrics: NSD against MONAI's compute_surface_dice, AUC on known curves."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_med.metrics import auc, dice, nsd, surface

scipy_ndimage = pytest.importorskip("scipy.ndimage")


def _random_shape(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A random blobby mask: smoothed noise above a threshold, plus a random ellipsoid."""
    noise = scipy_ndimage.gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(1.0, 2.5))
    blob = noise > np.quantile(noise, rng.uniform(0.6, 0.9))
    zz, yy, xx = np.indices(shape)
    c = rng.uniform(0.3, 0.7, 3) * np.array(shape)
    r = rng.uniform(0.15, 0.35, 3) * np.array(shape)
    ell = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
    return blob | ell


@pytest.mark.parametrize("seed", range(6))
def test_nsd_matches_monai_on_random_shapes_with_anisotropic_spacing(seed: int) -> None:
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics", reason="MONAI is in the train extra")
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(12, 28, 3))
    gt = _random_shape(rng, shape)
    pred = scipy_ndimage.binary_dilation(gt, iterations=int(rng.integers(0, 3)))
    pred ^= _random_shape(rng, shape) & (rng.random(shape) < 0.5)  # holes and islands
    spacing = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(0.5, 1.2)), 0.8)
    tol = float(rng.choice([1.0, 2.0, 3.0]))

    def onehot(m: np.ndarray):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    ref = metrics.compute_surface_dice(
        onehot(pred), onehot(gt), class_thresholds=[tol], spacing=spacing
    )
    assert nsd(pred, gt, spacing, tol) == pytest.approx(float(ref[0, 0]), abs=1e-6)


def test_nsd_hand_computed_cases() -> None:
    gt = np.zeros((6, 10, 10), bool)
    gt[1:5, 2:8, 2:8] = True
    assert nsd(gt, gt, (3.0, 1.0, 1.0)) == 1.0
    shifted = np.roll(gt, 1, axis=0)  # one slice up: 3 mm away along z
    assert nsd(shifted, gt, (3.0, 1.0, 1.0), tolerance=2.0) < 1.0
    assert nsd(shifted, gt, (1.0, 1.0, 1.0), tolerance=2.0) == 1.0  # 1 mm away
    empty = np.zeros_like(gt)
    assert nsd(empty, empty, (1, 1, 1)) == 1.0 and nsd(empty, gt, (1, 1, 1)) == 0.0
    # the surface of a filled box is its shell (4 x 6 x 6 box: 2 x 4 x 4 interior)
    assert int(surface(gt).sum()) == 4 * 6 * 6 - 2 * 4 * 4
    with pytest.raises(ValueError, match="spacing"):
        nsd(gt, gt, (1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        nsd(gt, gt[:3], (1.0, 1.0, 1.0))


def test_auc_trapezoid_with_unit_steps() -> None:
    assert auc([0.5, 0.6, 0.7, 0.8, 0.9]) == pytest.approx(0.55 + 0.65 + 0.75 + 0.85)
    assert auc([1.0] * 5) == pytest.approx(4.0)  # the maximum for 5 clicks
    assert auc([0.0, 1.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least two"):
        auc([0.7])
    a = np.zeros((2, 2, 2), bool)
    assert dice(a, a) == 1.0
