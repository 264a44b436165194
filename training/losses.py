"""SAM's training loss: focal:dice = 20:1 on the masks, MSE on the IoU head.

With several (multimask) outputs only the lowest mask loss is back-propagated; the IoU head
learns the actual IoU of every predicted mask with the ground truth (targets detached). The
mask losses are MONAI's ``FocalLoss`` (sigmoid) and ``DiceLoss`` (sigmoid), per mask.
"""

from __future__ import annotations

import torch
from torch import nn


def _monai_losses(gamma: float, alpha: float | None) -> tuple[nn.Module, nn.Module]:
    try:
        from monai.losses import DiceLoss, FocalLoss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "training needs MONAI: pip install 'napari-sam-med[train]'  (monai, pyyaml, "
            "tensorboard)"
        ) from err
    focal = FocalLoss(gamma=gamma, alpha=alpha, reduction="none", use_softmax=False)
    dice = DiceLoss(sigmoid=True, reduction="none")
    return focal, dice


def mask_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``gt`` per mask: ``(B, M, L, L)``, ``(B, 1, L, L)`` -> ``(B, M)``.

    Two empty masks have IoU 1.
    """
    pred = logits > 0
    target = (gt > 0.5).expand_as(pred)
    inter = (pred & target).flatten(2).sum(-1).float()
    union = (pred | target).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class SamLoss(nn.Module):
    """Per-sample SAM loss for one decoder pass.

    Args:
        focal_weight / dice_weight: weights of the focal and Dice terms (20 and 1 in SAM).
        iou_weight: weight of the IoU-prediction MSE (1 in SAM).
        focal_gamma / focal_alpha: MONAI ``FocalLoss`` parameters (``alpha`` weights positive
            pixels by ``alpha`` and negatives by ``1 - alpha``; ``None`` = unweighted).
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = 0.25,
    ) -> None:
        super().__init__()
        self.focal, self.dice = _monai_losses(focal_gamma, focal_alpha)
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight

    def mask_losses(self, logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``focal_weight * focal + dice_weight * dice`` per mask, ``(B, M)``.

        Args:
            logits: ``(B, M, L, L)`` mask logits.
            gt: ``(B, 1, L, L)`` binary ground truth (bool or float).
        """
        b, m = logits.shape[:2]
        flat = logits.float().reshape(b * m, 1, *logits.shape[2:])
        target = (gt > 0.5).float().expand(b, m, *gt.shape[2:]).reshape_as(flat)
        focal = self.focal(flat, target).flatten(1).mean(1)
        dice = self.dice(flat, target).flatten(1).mean(1)
        return (self.focal_weight * focal + self.dice_weight * dice).reshape(b, m)

    def forward(
        self, logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample loss ``(B,)``: the lowest mask loss + ``iou_weight`` * IoU MSE.

        Args:
            logits: ``(B, M, L, L)`` low-res mask logits (``M`` = 1 or 3).
            iou_pred: ``(B, M)`` predicted IoU.
            gt: ``(B, 1, L, L)`` ground truth on the logits grid.
        """
        per_mask = self.mask_losses(logits, gt)
        best = per_mask.min(dim=1).values
        target = mask_iou(logits.detach(), gt)
        iou_mse = ((iou_pred.float() - target) ** 2).mean(dim=1)
        return best + self.iou_weight * iou_mse


def build_loss(cfg: object) -> SamLoss:
    """A :class:`SamLoss` from a ``LossConfig``."""
    return SamLoss(
        cfg.focal_weight, cfg.dice_weight, cfg.iou_weight, cfg.focal_gamma, cfg.focal_alpha
    )
