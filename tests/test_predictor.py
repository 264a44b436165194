"""SamPredictor: prompts in original (x, y) pixels, masks back at the original size."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_med import SamPredictor
from napari_sam_med.preprocessing import apply_intensity


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture()
def tiny_predictor(tiny_model):
    p = SamPredictor(tiny_model)
    rng = np.random.default_rng(0)
    p.set_image(rng.uniform(0, 255, (90, 150)).astype(np.float32))
    return p


def test_shapes_non_square(tiny_predictor):
    p = tiny_predictor
    masks, iou, low = p.predict(point_coords=[[20, 30]], point_labels=[1])
    assert masks.shape == (3, 90, 150) and masks.dtype == bool
    assert iou.shape == (3,) and low.shape == (3, 32, 32)
    masks, iou, low = p.predict(box=[10, 5, 100, 80], multimask_output=False)
    assert masks.shape == (1, 90, 150) and iou.shape == (1,)
    m2, _, _ = p.predict(
        point_coords=[[20, 30]],
        point_labels=[1],
        mask_input=low[:1],
        multimask_output=False,
        return_logits=True,
    )
    assert m2.dtype == np.float32


def test_prompts_map_through_the_geometry(tiny_predictor):
    g = tiny_predictor.geometry
    assert g.original_size == (90, 150) and g.input_size == (77, 128)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "empty prompt"),
        ({"point_coords": [[10, 10]]}, "together"),
        ({"point_coords": [[200, 10]], "point_labels": [1]}, r"outside the image of width 150"),
        ({"point_coords": [[10, -1]], "point_labels": [1]}, "outside"),
        ({"point_coords": [[10, 10]], "point_labels": [1, 0]}, "2 entries for 1 points"),
        ({"point_coords": [[10, 10]], "point_labels": [5]}, "0 \\(background\\) or 1"),
        ({"point_coords": [[np.nan, 10]], "point_labels": [1]}, "NaN"),
        ({"box": [50, 10, 20, 40]}, "x1 < x0"),
        ({"box": [0, 0, 10]}, "box must be"),
        ({"box": [0, 0, 10, 200]}, "outside"),
        ({"mask_input": np.zeros((5, 5))}, "mask_input must be"),
    ],
)
def test_bad_prompts(tiny_predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_predictor.predict(**kwargs)


def test_bad_images(tiny_model):
    p = SamPredictor(tiny_model)
    with pytest.raises(ValueError, match="no image is set"):
        p.predict(box=[0, 0, 5, 5])
    with pytest.raises(ValueError, match="NaN/Inf"):
        p.set_image(np.full((20, 20), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\)"):
        p.set_image(np.zeros((4, 20, 20, 2)))
    p.set_image(np.zeros((20, 30, 3), np.uint8))
    assert p.get_image_embedding().shape == (1, 32, 8, 8)
    p.reset_image()
    with pytest.raises(ValueError, match="no image is set"):
        p.get_image_embedding()


def test_predict_torch_needs_labels_with_points(tiny_predictor):
    import torch

    coords = torch.zeros((1, 1, 2))
    with pytest.raises(ValueError, match="point_coords need point_labels"):
        tiny_predictor.predict_torch(coords, None)
    masks, iou, _ = tiny_predictor.predict_torch(coords, torch.ones((1, 1), dtype=torch.int64))
    assert masks.shape == (1, 3, 90, 150) and iou.shape == (1, 3)


def test_lite_medsam_box_on_real_slice(lite_medsam, shared_data):
    """The default weights give a sensible box segmentation of a real tumour slice."""
    from napari_sam_med.volume.io import read_volume

    img = read_volume(shared_data / "ibsi_sts" / "STS_002" / "MR_T1_image.nii.gz")
    lab = read_volume(shared_data / "ibsi_sts" / "STS_002" / "MR_T1_mask.nii.gz").array > 0
    z = int(np.argmax(lab.sum(axis=(1, 2))))
    vol = apply_intensity(img.array, "mr")
    ys, xs = np.nonzero(lab[z])
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    p = SamPredictor(lite_medsam)
    p.set_image(vol[z])
    masks, iou, _ = p.predict(box=box, multimask_output=False)
    dice = _dice(masks[0], lab[z])
    assert dice > 0.8, f"Dice {dice:.3f} of LiteMedSAM box prompt on STS_002 MR slice {z}"
    assert 0 < iou[0] <= 1.2


def test_lite_medsam_on_sample_ct(lite_medsam):
    """Our own synthetic CT: a box around the lesion segments it."""
    from napari_sam_med.volume.io import read_volume
    from tests.conftest import SAMPLE_DATA

    path = SAMPLE_DATA / "ct_phantom.nii.gz"
    if not path.exists():
        pytest.skip("sample data not generated yet")
    img = read_volume(path)
    lab = read_volume(SAMPLE_DATA / "ct_phantom_label.nii.gz").array == 1
    z = int(np.argmax(lab.sum(axis=(1, 2))))
    ys, xs = np.nonzero(lab[z])
    p = SamPredictor(lite_medsam)
    p.set_image(apply_intensity(img.array, "ct_soft_tissue")[z])
    masks, _, _ = p.predict(
        box=[xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2], multimask_output=False
    )
    assert _dice(masks[0], lab[z]) > 0.8
