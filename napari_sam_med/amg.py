"""Automatic mask generator: SAM's fully automatic data-engine stage on one 2D image.

A regular point grid is prompted in batches with multimask output; masks are kept by
predicted IoU and stability score, de-duplicated with box NMS (our own torch code, no
torchvision), optionally over zoomed overlapping crop layers with NMS across crops, cleaned
of small regions and holes, and returned as records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .amg_utils import (
    batched_box_nms,
    box_from_masks,
    box_near_crop_edge,
    crop_boxes,
    mask_to_rle,
    point_grid,
    remove_small_regions,
    stability_score,
)
from .predictor import MASK_THRESHOLD, SamPredictor

if TYPE_CHECKING:
    from .modeling.protocol import PromptModel

logger = logging.getLogger(__name__)


@dataclass
class AMGSettings:
    """Settings of the automatic mask generator (SAM's defaults)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    prompt_type: str = "points"
    box_scales: tuple[float, ...] = (0.15, 0.3, 0.5)

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError(
                f"points_per_side={self.points_per_side} and points_per_batch="
                f"{self.points_per_batch} must be >= 1"
            )
        if self.prompt_type not in ("points", "boxes"):
            raise ValueError(
                f"prompt_type={self.prompt_type!r}; expected 'points' (SAM) or "
                "'boxes' (box-trained models such as MedSAM/LiteMedSAM)"
            )
        if self.output_mode not in ("binary_mask", "uncompressed_rle"):
            raise ValueError(
                f"output_mode={self.output_mode!r}; expected 'binary_mask' or 'uncompressed_rle'"
            )
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_nms_thresh",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1]")


# Box-prompted LiteMedSAM/MedSAM score good masks lower than SAM does (IoU ~0.85, stability
# ~0.83 on a clear lesion of the sample CT), so SAM's 0.88/0.95 would drop them.
BOX_PROMPT_THRESHOLDS = (0.8, 0.8)
POINT_PROMPT_THRESHOLDS = (0.88, 0.95)


def settings_for_model(
    model_name: str,
    prompt_type: str = "auto",
    pred_iou_thresh: float | None = None,
    stability_score_thresh: float | None = None,
) -> dict[str, Any]:
    """The AMG prompt type and thresholds suited to a model (what ``sam-med auto`` uses).

    Args:
        model_name: ``model.config.name``; names containing ``medsam`` are box-trained.
        prompt_type: ``"auto"`` (boxes for MedSAM/LiteMedSAM, points for SAM), ``"points"``
            or ``"boxes"``.
        pred_iou_thresh, stability_score_thresh: explicit values win over the defaults
            (0.8/0.8 for boxes, SAM's 0.88/0.95 for points).

    Returns:
        ``{"prompt_type", "pred_iou_thresh", "stability_score_thresh"}`` for
        :class:`AutomaticMaskGenerator`.
    """
    if prompt_type == "auto":
        prompt_type = "boxes" if "medsam" in str(model_name) else "points"
    iou, stab = BOX_PROMPT_THRESHOLDS if prompt_type == "boxes" else POINT_PROMPT_THRESHOLDS
    return {
        "prompt_type": prompt_type,
        "pred_iou_thresh": iou if pred_iou_thresh is None else float(pred_iou_thresh),
        "stability_score_thresh": stab
        if stability_score_thresh is None
        else float(stability_score_thresh),
    }


class AutomaticMaskGenerator:
    """Generate all masks of an image without prompts.

    ``prompt_type="points"`` is SAM's recipe (one foreground point per grid cell, three
    ambiguity masks each). Box-trained models (MedSAM, LiteMedSAM) answer single points
    poorly, so ``prompt_type="boxes"`` prompts each grid point with square boxes of
    ``box_scales`` times the image's shorter side instead (one mask each); the IoU,
    stability, NMS and crop logic is the same.

    Args:
        model: a model from ``build_sam``.
        **settings: any field of :class:`AMGSettings`.
    """

    def __init__(self, model: PromptModel, **settings: Any) -> None:
        self.settings = AMGSettings(**settings)
        self.predictor = SamPredictor(model)

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks of an ``(H, W)`` or ``(H, W, 3)`` image with values in ``[0, 255]``.

        Returns:
            A list of records with ``segmentation`` (``(H, W)`` bool or uncompressed RLE),
            ``area``, ``bbox`` (x, y, w, h), ``predicted_iou``, ``stability_score``,
            ``point_coords`` ([[x, y]]) and ``crop_box`` (x, y, w, h).
        """
        arr = np.asarray(image)
        h, w = arr.shape[:2]
        s = self.settings
        boxes, layers = crop_boxes((h, w), s.crop_n_layers, s.crop_overlap_ratio)
        found: list[dict[str, torch.Tensor]] = []
        for crop, layer in zip(boxes, layers, strict=True):
            data = self._process_crop(arr, crop, layer)
            if data is not None:
                found.append(data)
        if not found:
            return []
        data = {k: torch.cat([d[k] for d in found]) for k in found[0]}
        if len(boxes) > 1:
            # Prefer masks from smaller (more zoomed) crops across crops.
            scores = 1.0 / _box_area(data["crop_boxes"]).clamp(min=1)
            keep = batched_box_nms(
                data["boxes"], scores, torch.zeros_like(scores), s.crop_nms_thresh
            )
            data = {k: v[keep] for k, v in data.items()}
        masks = data["masks"].numpy()
        if s.min_mask_region_area > 0:
            masks, data = self._postprocess_small_regions(masks, data)
        return self._records(masks, data)

    def _process_crop(self, image: np.ndarray, crop: list[int], layer: int):
        s = self.settings
        x0, y0, x1, y1 = crop
        cropped = image[y0:y1, x0:x1]
        ch, cw = cropped.shape[:2]
        self.predictor.set_image(cropped)
        n_side = max(1, s.points_per_side // (s.crop_n_points_downscale_factor**layer))
        points = point_grid(n_side) * np.array([[cw, ch]], dtype=np.float32)
        parts = []
        for start in range(0, len(points), s.points_per_batch):
            parts.append(self._process_batch(points[start : start + s.points_per_batch]))
        self.predictor.reset_image()
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if len(data["iou"]) == 0:
            return None
        keep = batched_box_nms(
            data["boxes"].float(), data["iou"], torch.zeros_like(data["iou"]), s.box_nms_thresh
        )
        data = {k: v[keep] for k, v in data.items()}
        # Uncrop: place masks, boxes and points back in full-image coordinates.
        full_h, full_w = image.shape[:2]
        if (ch, cw) != (full_h, full_w):
            canvas = torch.zeros((len(data["masks"]), full_h, full_w), dtype=torch.bool)
            canvas[:, y0:y1, x0:x1] = data["masks"]
            data["masks"] = canvas
        offset = torch.tensor([x0, y0, x0, y0])
        data["boxes"] = data["boxes"] + offset
        # Masks cut by a crop edge that is not an image edge are dropped, as SAM does.
        keep = ~box_near_crop_edge(data["boxes"], crop, [0, 0, full_w, full_h])
        data = {k: v[keep] for k, v in data.items()}
        data["points"] = data["points"] + torch.tensor([x0, y0], dtype=torch.float32)
        data["crop_boxes"] = torch.tensor([crop] * len(data["iou"]), dtype=torch.int64)
        return data

    def _process_batch(self, points_xy: np.ndarray) -> dict[str, torch.Tensor]:
        s = self.settings
        geom = self.predictor.geometry
        dev = self.predictor.device
        if s.prompt_type == "points":
            coords = torch.as_tensor(geom.coords_to_input(points_xy), device=dev)
            labels = torch.ones(len(points_xy), 1, dtype=torch.int64, device=dev)
            logits, iou, _ = self.predictor.predict_torch(
                coords[:, None, :], labels, multimask_output=True, return_logits=True
            )
        else:
            h, w = geom.original_size
            boxes = _grid_boxes(points_xy, s.box_scales, min(h, w), w, h)
            logits, iou, _ = self.predictor.predict_torch(
                None,
                None,
                torch.as_tensor(geom.boxes_to_input(boxes), device=dev),
                multimask_output=False,
                return_logits=True,
            )
            logits = logits.reshape(len(points_xy), len(s.box_scales), *logits.shape[-2:])
            iou = iou.reshape(len(points_xy), len(s.box_scales))
        k = logits.shape[1]
        logits = logits.flatten(0, 1).cpu()
        iou = iou.flatten(0, 1).float().cpu()
        pts = torch.as_tensor(points_xy).repeat_interleave(k, dim=0)
        keep = (
            iou > s.pred_iou_thresh if s.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=bool)
        )
        stab = stability_score(logits, MASK_THRESHOLD, s.stability_score_offset)
        if s.stability_score_thresh > 0:
            keep &= stab >= s.stability_score_thresh
        masks = logits[keep] > MASK_THRESHOLD
        return {
            "masks": masks,
            "iou": iou[keep],
            "stability": stab[keep],
            "points": pts[keep],
            "boxes": box_from_masks(masks),
        }

    def _postprocess_small_regions(self, masks: np.ndarray, data: dict[str, torch.Tensor]):
        area = self.settings.min_mask_region_area
        cleaned, scores, changed = [], [], []
        for m in masks:
            m2, c1 = remove_small_regions(m, area, "holes")
            m2, c2 = remove_small_regions(m2, area, "islands")
            cleaned.append(m2)
            changed.append(c1 or c2)
            # Masks that changed get score 0 so that unchanged ones win NMS, as in SAM.
            scores.append(0.0 if (c1 or c2) else 1.0)
        masks_t = torch.as_tensor(np.stack(cleaned)) if cleaned else torch.zeros(0)
        boxes = box_from_masks(masks_t)
        keep = batched_box_nms(
            boxes.float(),
            torch.tensor(scores),
            torch.zeros(len(scores)),
            self.settings.box_nms_thresh,
        )
        data = {k: v[keep] for k, v in data.items()}
        data["boxes"] = boxes[keep]
        return masks_t[keep].numpy(), data

    def _records(self, masks: np.ndarray, data: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        out = []
        for i, m in enumerate(masks):
            m = m.astype(bool)
            x0, y0, x1, y1 = (int(v) for v in data["boxes"][i].tolist())
            cx0, cy0, cx1, cy1 = (int(v) for v in data["crop_boxes"][i].tolist())
            seg = mask_to_rle(m) if self.settings.output_mode == "uncompressed_rle" else m
            out.append(
                {
                    "segmentation": seg,
                    "area": int(m.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(data["iou"][i]),
                    "stability_score": float(data["stability"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        out.sort(key=lambda r: r["area"], reverse=True)
        return out


def _grid_boxes(points_xy: np.ndarray, scales, short: int, w: int, h: int) -> np.ndarray:
    """``(N * len(scales), 4)`` square boxes centred on each point, clipped to the image."""
    half = np.asarray(scales, dtype=np.float32)[None, :, None] * short / 2.0
    c = np.asarray(points_xy, dtype=np.float32)[:, None, :]
    lo = np.maximum(c - half, 0.0)
    hi = np.minimum(c + half, np.array([w - 1, h - 1], dtype=np.float32))
    return np.concatenate([lo, hi], axis=-1).reshape(-1, 4)


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float()


__all__ = ["AMGSettings", "AutomaticMaskGenerator", "settings_for_model"]
