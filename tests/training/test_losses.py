"""SAM loss with hand-computed values (training/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import SamLoss, mask_iou


def test_focal_and_dice_at_p_half_all_positive():
    # logits 0 -> p = 0.5 on a 2x2 all-foreground target.
    # focal = alpha * (1 - p)^2 * -log(p) = 0.25 * 0.25 * ln 2 per pixel (mean = same)
    # dice (MONAI, smooth 1e-5) = 1 - (2 * 2 + 1e-5) / (2 + 4 + 1e-5)
    loss = SamLoss(focal_weight=20, dice_weight=1, focal_gamma=2, focal_alpha=0.25)
    logits = torch.zeros(1, 1, 2, 2)
    gt = torch.ones(1, 1, 2, 2)
    focal = 0.25 * 0.25 * math.log(2)
    dice = 1 - (4 + 1e-5) / (6 + 1e-5)
    got = loss.mask_losses(logits, gt)
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(20 * focal + dice, rel=1e-5)


def test_focal_negative_pixels_use_one_minus_alpha():
    # one pixel, logit ln(3) -> p = 0.75, target 0: focal = (1 - 0.25) * 0.75^2 * -log(0.25)
    loss = SamLoss(focal_weight=1, dice_weight=0)
    got = loss.mask_losses(torch.full((1, 1, 1, 1), math.log(3)), torch.zeros(1, 1, 1, 1))
    assert got.item() == pytest.approx(0.75 * 0.75**2 * math.log(4), rel=1e-5)


def test_only_the_lowest_mask_loss_counts_and_iou_mse_has_weight_one():
    loss = SamLoss(focal_weight=20, dice_weight=1, iou_weight=1)
    gt = torch.zeros(1, 1, 4, 4)
    gt[..., :2, :] = 1  # 8 of 16 px
    perfect = gt * 20 - 10  # +10 inside, -10 outside
    wrong = -perfect
    half = torch.zeros(1, 1, 4, 4)
    logits = torch.cat([wrong, perfect, half], dim=1)  # (1, 3, 4, 4)
    per_mask = loss.mask_losses(logits, gt)
    assert per_mask.argmin().item() == 1
    iou_pred = torch.tensor([[0.5, 0.5, 0.5]])
    # actual IoU of (logits > 0): wrong 0, perfect 1, half (all <= 0 -> empty) 0
    torch.testing.assert_close(mask_iou(logits, gt), torch.tensor([[0.0, 1.0, 0.0]]))
    expected = per_mask[0, 1] + ((0.5**2) + (0.5**2) + (0.5**2)) / 3
    assert loss(logits, iou_pred, gt).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_flows_only_into_the_best_mask():
    loss = SamLoss()
    gt = torch.zeros(1, 1, 4, 4)
    gt[..., 1:3, 1:3] = 1
    logits = torch.stack([gt[0, 0] * 8 - 4, -(gt[0, 0] * 8 - 4)])[None].requires_grad_()
    loss(logits, torch.zeros(1, 2), gt).backward()
    assert logits.grad[0, 0].abs().sum() > 0
    assert logits.grad[0, 1].abs().sum() == 0


def test_iou_of_two_empty_masks_is_one():
    assert mask_iou(torch.full((1, 1, 3, 3), -1.0), torch.zeros(1, 1, 3, 3)).item() == 1.0
