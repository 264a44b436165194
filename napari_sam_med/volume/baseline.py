"""The published LiteMedSAM CVPR 2024 3D procedure, as a reference row for benchmarks.

It is not the engine (:mod:`napari_sam_med.volume.propagate` is): it exists so that every 3D
benchmark can show how the published procedure does with the same weights and cases.

The procedure: the middle slice of a 3D box ``[x0, y0, z0, x1, y1, z1]`` (inclusive voxel
indices; middle = ``z0 + (z1 - z0) // 2``) is segmented from the box's 2D box; then both ways
inside the z-range, each next slice gets the bounding box of the previous slice's mask on the
model's input grid (256 for LiteMedSAM) grown by 3 px, or the 3D box's 2D box again when the
previous mask is empty. No mask prompt, no stop rules.
"""

from __future__ import annotations

import numpy as np

from .slices import SliceSegmenter

GROW_PX = 3


def baseline_box3d(seg: SliceSegmenter, box3d: list[int] | np.ndarray) -> np.ndarray:
    """Run the LiteMedSAM CVPR 2024 3D procedure.

    Args:
        seg: the volume's segmenter (its model is normally the published ``lite_medsam``).
        box3d: ``[x0, y0, z0, x1, y1, z1]``, inclusive voxel indices.

    Returns:
        ``(Z, H, W)`` bool mask.
    """
    x0, y0, z0, x1, y1, z1 = (int(round(float(v))) for v in np.asarray(box3d).ravel())
    if not (0 <= z0 <= z1 < seg.num_slices):
        raise ValueError(f"box3d z-range {z0}..{z1} is outside the volume 0..{seg.num_slices - 1}")
    out = np.zeros((seg.num_slices, *seg.slice_shape), dtype=bool)
    default = np.array([x0, y0, x1, y1], np.float32)
    zm = (z1 - z0) // 2 + z0
    h, w = seg.slice_shape
    size = seg.config.img_size
    scale = size / max(h, w)

    def box_from(prev: np.ndarray) -> np.ndarray:
        if not prev.any():
            return default
        ys, xs = np.nonzero(prev)
        # the mask's box on the model grid, grown by 3 px, mapped back to slice pixels
        grid = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64) * scale
        grid = np.clip(grid + np.array([-GROW_PX, -GROW_PX, GROW_PX, GROW_PX]), 0, size - 1)
        # padding of the model grid lies outside the slice: clip to the slice itself
        return np.clip(grid / scale, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)

    for z in range(zm, z1 + 1):
        box = default if z == zm else box_from(out[z - 1])
        out[z] = seg.predict(z, box=box, source="baseline").mask
    for z in range(zm - 1, z0 - 1, -1):
        out[z] = seg.predict(z, box=box_from(out[z + 1]), source="baseline").mask
    return out
