"""Automatic mask generator: filters, NMS, RLE, crops, on the tiny model and LiteMedSAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_med import AutomaticMaskGenerator
from napari_sam_med.amg_utils import (
    batched_box_nms,
    box_from_masks,
    box_iou,
    box_nms,
    crop_boxes,
    mask_to_rle,
    point_grid,
    remove_small_regions,
    rle_to_mask,
    stability_score,
)


def test_point_grid():
    g = point_grid(4)
    assert g.shape == (16, 2)
    np.testing.assert_allclose(g[0], [0.125, 0.125])
    np.testing.assert_allclose(g[-1], [0.875, 0.875])


def test_stability_score_hand_computed():
    logits = torch.tensor([[[3.0, 0.5, -0.5, -3.0]]])  # > +1: 1 px; > -1: 3 px
    assert stability_score(logits, 0.0, 1.0).item() == pytest.approx(1 / 3)


def test_box_iou_and_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(81 / 100)
    assert iou[0, 2].item() == 0
    keep = box_nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.7)
    assert keep.tolist() == [1, 2]
    keep = box_nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.9)
    assert keep.tolist() == [1, 0, 2]
    keep = batched_box_nms(boxes, torch.tensor([0.5, 0.9, 0.1]), torch.tensor([0, 1, 0]), 0.7)
    assert sorted(keep.tolist()) == [0, 1, 2]


def test_box_from_masks():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:7] = True
    assert box_from_masks(m).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 9)) > 0.5
        rle = mask_to_rle(m)
        assert sum(rle["counts"]) == 63
        np.testing.assert_array_equal(rle_to_mask(rle), m)
    assert mask_to_rle(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_remove_small_regions():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # a 1-px hole
    m[18, 18] = True  # a 1-px island
    filled, changed = remove_small_regions(m, 4, "holes")
    assert changed and filled[5, 5]
    cleaned, changed = remove_small_regions(filled, 4, "islands")
    assert changed and not cleaned[18, 18] and cleaned[3, 3]


def test_crop_boxes_cover_image():
    boxes, layers = crop_boxes((100, 150), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 150, 100] and layers == [0, 1, 1, 1, 1]
    assert max(b[2] for b in boxes) == 150 and max(b[3] for b in boxes) == 100


def test_amg_on_tiny_model(tiny_model):
    img = np.zeros((64, 80), np.float32)
    img[10:40, 20:60] = 200
    gen = AutomaticMaskGenerator(
        tiny_model,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        min_mask_region_area=5,
        output_mode="uncompressed_rle",
    )
    records = gen.generate(img)
    for r in records:
        assert set(r) >= {
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "stability_score",
            "point_coords",
            "crop_box",
        }
        m = rle_to_mask(r["segmentation"])
        assert m.shape == (64, 80) and m.sum() == r["area"]
    with pytest.raises(ValueError, match="output_mode"):
        AutomaticMaskGenerator(tiny_model, output_mode="png")


def test_amg_on_lite_medsam(lite_medsam):
    """Two bright discs on a dark background: LiteMedSAM's AMG (box grid) finds them.

    LiteMedSAM was trained with boxes; with single-point prompts it returns near-empty
    masks of low predicted IoU (about 0.1-0.2), which SAM's filters rightly reject.
    """
    yy, xx = np.mgrid[:128, :160]
    img = np.zeros((128, 160), np.float32)
    img[(yy - 40) ** 2 + (xx - 45) ** 2 < 20**2] = 220
    img[(yy - 85) ** 2 + (xx - 115) ** 2 < 25**2] = 160
    gen = AutomaticMaskGenerator(
        lite_medsam,
        points_per_side=8,
        prompt_type="boxes",
        box_scales=(0.3, 0.5),
        pred_iou_thresh=0.5,
        stability_score_thresh=0.8,
    )
    records = gen.generate(img)
    assert records, "no masks found"
    disc = (yy - 85) ** 2 + (xx - 115) ** 2 < 25**2
    best = max(2 * (r["segmentation"] & disc).sum() / (r["area"] + disc.sum()) for r in records)
    assert best > 0.8, f"best Dice with the large disc {best:.3f}"
