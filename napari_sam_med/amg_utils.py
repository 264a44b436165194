"""Building blocks of the automatic mask generator: grids, crops, scores, NMS, RLE.

All torch/numpy, no torchvision. Boxes are ``(x0, y0, x1, y1)`` in pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` points ``(x, y)`` in ``[0, 1]``, at cell centres of an n x n grid."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side, dtype=np.float32)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def crop_boxes(
    size_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """The full image plus, per layer i >= 1, a (2^i x 2^i) grid of overlapping crops.

    Returns:
        ``(boxes, layer_indices)`` with boxes ``[x0, y0, x1, y1]``.
    """
    h, w = size_hw
    boxes, layers = [[0, 0, w, h]], [0]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short * (2 / n))
        cw = int(math.ceil((overlap * (n - 1) + w) / n))
        ch = int(math.ceil((overlap * (n - 1) + h) / n))
        xs = [int((cw - overlap) * i) for i in range(n)]
        ys = [int((ch - overlap) * i) for i in range(n)]
        for y0 in ys:
            for x0 in xs:
                boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
                layers.append(layer)
    return boxes, layers


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at ``threshold + offset`` and ``threshold - offset``.

    Args:
        logits: ``(N, H, W)`` mask logits.

    Returns:
        ``(N,)`` float scores in [0, 1] (1 for an empty mask at both thresholds).
    """
    inter = (logits > (threshold + offset)).flatten(1).sum(-1, dtype=torch.int64)
    union = (logits > (threshold - offset)).flatten(1).sum(-1, dtype=torch.int64)
    return torch.where(
        union > 0,
        inter.float() / union.clamp(min=1).float(),
        torch.ones_like(inter, dtype=torch.float32),
    )


def box_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``(N, 4)`` int64 boxes ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of ``(N, H, W)`` masks.

    An empty mask gets ``[0, 0, 0, 0]``.
    """
    if masks.numel() == 0 or masks.ndim != 3:
        return torch.zeros((0 if masks.ndim != 3 else masks.shape[0], 4), dtype=torch.int64)
    n, h, w = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ar_h = torch.arange(h).expand(n, h)
    ar_w = torch.arange(w).expand(n, w)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    y0 = torch.where(rows, ar_h, h).amin(1)
    x0 = torch.where(cols, ar_w, w).amin(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(1)
    boxes[empty] = 0
    return boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)`` of boxes ``(N, 4)`` and ``(M, 4)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of kept boxes, by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    ious = box_iou(boxes[order].float(), boxes[order].float())
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ious[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def batched_box_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS applied independently within each group id (boxes of different groups never clash)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    offset = (boxes.max().float() + 1) * groups.to(torch.float32)
    return box_nms(boxes.float() + offset[:, None], scores, iou_threshold)


def box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """True for boxes touching an edge of ``crop_box`` that is not an edge of the image."""
    crop = torch.as_tensor(crop_box, dtype=torch.float32)
    img = torch.as_tensor(image_box, dtype=torch.float32)
    b = boxes.float()
    near_crop = torch.isclose(b, crop[None], atol=atol, rtol=0)
    near_img = torch.isclose(b, img[None], atol=atol, rtol=0)
    return (near_crop & ~near_img).any(dim=1)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO-style uncompressed RLE of an ``(H, W)`` bool mask (column-major counts)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        flat[pos : pos + c] = val
        pos += c
        val = not val
    return flat.reshape(w, h).T


def remove_small_regions(mask: np.ndarray, area_thresh: int, mode: str) -> tuple[np.ndarray, bool]:
    """Remove islands (``mode="islands"``) or fill holes (``"holes"``) smaller than a size.

    Returns:
        ``(mask, changed)``.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode={mode!r}; expected 'holes' or 'islands'")
    import SimpleITK as sitk  # lazy: only needed when min_mask_region_area > 0

    fill = mode == "holes"
    work = np.asarray(mask, dtype=bool)
    work = ~work if fill else work
    cc = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(work.astype(np.uint8)), False)
    )
    sizes = np.bincount(cc.ravel())
    small = [i for i in range(1, len(sizes)) if sizes[i] < area_thresh]
    if not small:
        return np.asarray(mask, dtype=bool), False
    if fill:
        keep = np.isin(cc, small, invert=True) & work
        return ~keep, True
    keep = [i for i in range(1, len(sizes)) if i not in small]
    if not keep:  # keep the largest region rather than erase the mask
        keep = [int(np.argmax(sizes[1:])) + 1]
    return np.isin(cc, keep), True
