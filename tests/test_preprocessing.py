"""Intensity presets, resize/pad geometry and the (z, y, x) <-> (x, y) converter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_med.config import get_config
from napari_sam_med.preprocessing import (
    apply_intensity,
    geometry_for,
    guess_preset,
    intensity_range,
    low_res_to_original,
    prepare_image,
    preprocess_shape,
    slice_xy_to_zyx,
    zyx_to_slice_xy,
)


def test_ct_window_soft_tissue():
    vol = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16)
    out = apply_intensity(vol, "ct_soft_tissue")
    np.testing.assert_allclose(out, [0, 0, 127.5, 255, 255], atol=1e-4)
    assert out.dtype == np.float32


def test_mr_percentiles_use_nonzero_voxels():
    rng = np.random.default_rng(0)
    vol = np.zeros((4, 50, 50), np.float32)
    vol[:, 10:40, 10:40] = rng.uniform(100, 200, size=(4, 30, 30))
    lo, hi = intensity_range(vol, "mr")
    nz = vol[vol != 0]
    assert lo == pytest.approx(np.percentile(nz, 0.5))
    assert hi == pytest.approx(np.percentile(nz, 99.5))
    out = apply_intensity(vol, "mr")
    assert out.min() == 0 and out.max() == pytest.approx(255)


def test_presets_are_volume_wide():
    vol = np.stack([np.full((8, 8), 10.0), np.full((8, 8), 20.0)]).astype(np.float32)
    whole = apply_intensity(vol, "minmax")
    assert whole[0].max() == 0 and whole[1].min() == pytest.approx(255)


def test_nan_rejected_and_unknown_preset():
    with pytest.raises(ValueError, match="NaN/Inf"):
        apply_intensity(np.array([1.0, np.nan]), "mr")
    with pytest.raises(ValueError, match="unknown intensity preset 'foo'"):
        apply_intensity(np.zeros(3), "foo")


def test_guess_preset():
    assert guess_preset("CT") == "ct_soft_tissue"
    assert guess_preset("MRI") == "mr"
    assert guess_preset(None, np.array([-1024, 400])) == "ct_soft_tissue"
    assert guess_preset(None, np.array([0, 900])) == "mr"


@pytest.mark.parametrize("h,w", [(300, 200), (100, 400), (256, 256)])
def test_prepare_image_pads_bottom_right(h, w):
    cfg = get_config("lite_medsam")
    img = np.random.default_rng(1).uniform(0, 255, (h, w)).astype(np.float32)
    x, geom = prepare_image(img, cfg)
    ih, iw = preprocess_shape(h, w, 256)
    assert max(ih, iw) == 256
    assert x.shape == (1, 3, 256, 256)
    assert geom.input_size == (ih, iw)
    assert float(x[..., ih:, :].abs().sum()) == 0 and float(x[..., :, iw:].abs().sum()) == 0
    assert float(x[..., :ih, :iw].min()) == pytest.approx(0, abs=1e-6)
    assert float(x[..., :ih, :iw].max()) == pytest.approx(1, abs=1e-6)


def test_sam_normalisation():
    cfg = get_config("vit_b")
    img = np.full((64, 64, 3), 123.675, np.float32)
    x, _ = prepare_image(img, cfg)
    assert x.shape == (1, 3, 1024, 1024)
    assert abs(float(x[0, 0, 0, 0])) < 1e-5


def test_coordinate_round_trip_non_square():
    cfg = get_config("lite_medsam")
    geom = geometry_for((300, 500), cfg)
    pts = np.array([[0, 0], [499, 299], [250.5, 10.25]], np.float32)
    back = geom.coords_from_input(geom.coords_to_input(pts))
    np.testing.assert_allclose(back, pts, rtol=1e-6)
    box = np.array([10, 20, 400, 280], np.float32)
    tb = geom.boxes_to_input(box)
    # as SAM: each axis scales by (rounded new size) / (old size): 256/500 and 154/300
    np.testing.assert_allclose(tb, box * np.array([256 / 500, 154 / 300] * 2), rtol=1e-5)


def test_low_res_mask_round_trip_non_square():
    """A rectangle drawn in model-input space comes back where it was in the original image."""
    cfg = get_config("lite_medsam")
    geom = geometry_for((200, 400), cfg)  # input 128 x 256
    low = torch.full((1, 1, 256, 256), -10.0)
    # region x in [64, 128), y in [32, 64) of the input -> original x [100, 200), y [50, 100)
    low[..., 32:64, 64:128] = 10.0
    full = low_res_to_original(low, geom)[0, 0] > 0
    assert full.shape == (200, 400)
    ys, xs = np.nonzero(full.numpy())
    assert abs(xs.min() - 100) <= 2 and abs(xs.max() - 199) <= 2
    assert abs(ys.min() - 50) <= 2 and abs(ys.max() - 99) <= 2


def test_zyx_converter():
    z, xy = zyx_to_slice_xy(np.array([[3, 10, 20], [4.2, 1.5, 2.5]]))
    np.testing.assert_array_equal(z, [3, 4])
    np.testing.assert_allclose(xy, [[20, 10], [2.5, 1.5]])
    back = slice_xy_to_zyx(z, xy)
    np.testing.assert_allclose(back, [[3, 10, 20], [4, 1.5, 2.5]])
    z2, xy2 = zyx_to_slice_xy(np.array([[5, 7]]))
    assert z2.tolist() == [0] and xy2.tolist() == [[7, 5]]
    with pytest.raises(ValueError, match="points must be"):
        zyx_to_slice_xy(np.zeros((2, 4)))
