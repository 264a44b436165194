"""Per-object 3D segmentation state, its QC trace, and composition into one label map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .prompt import SlicePrompt
from .slices import SlicePrediction


@dataclass
class ObjectSegmentation:
    """One object (tumour) across slices.

    Attributes:
        label: the value it takes in the label map (>= 1).
        name: a display name.
        slices: slice index -> :class:`SlicePrediction` (only slices that contain the object).
        key_prompts: slice index -> the user's prompt on it (a :class:`~.prompt.SlicePrompt`,
            in ``(x, y)`` pixels of that slice; dicts in its JSON form are read as one).
        stop_reasons: direction (``"down"``/``"up"``) -> why propagation stopped there.
    """

    label: int = 1
    name: str = "object"
    slices: dict[int, SlicePrediction] = field(default_factory=dict)
    key_prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    stop_reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.label) < 1:
            raise ValueError(f"object label must be >= 1 (0 is background); got {self.label}")

    @property
    def z_extent(self) -> tuple[int, int] | None:
        """``(first, last)`` slice holding the object, or None when empty."""
        zs = [z for z, p in self.slices.items() if p.area > 0]
        return (min(zs), max(zs)) if zs else None

    def voxel_count(self) -> int:
        """Number of voxels in the object."""
        return int(sum(p.area for p in self.slices.values()))

    def to_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The object as a ``(Z, H, W)`` bool volume."""
        out = np.zeros(shape, dtype=bool)
        for z, p in self.slices.items():
            out[z] = p.mask
        return out

    def qc_trace(self) -> list[dict[str, Any]]:
        """Per-slice QC: predicted IoU, stability, area, source, and a flag for weak slices."""
        rows = []
        for z in sorted(self.slices):
            p = self.slices[z]
            rows.append(
                {
                    "z": int(z),
                    "predicted_iou": round(p.iou, 4),
                    "stability": round(p.stability, 4),
                    "area": p.area,
                    "source": p.source,
                    "key_slice": z in self.key_prompts,
                    "flagged": p.weak,
                }
            )
        return rows

    def flagged_slices(self) -> list[int]:
        """Slices whose QC says 'look at me'."""
        return [r["z"] for r in self.qc_trace() if r["flagged"]]

    def summary(self, spacing_xyz: tuple[float, float, float] | None = None) -> dict[str, Any]:
        """JSON-friendly summary (volume in mL when the spacing is known)."""
        voxels = self.voxel_count()
        ext = self.z_extent
        out: dict[str, Any] = {
            "label": self.label,
            "name": self.name,
            "voxels": voxels,
            "slices": [ext[0], ext[1]] if ext else None,
            "stop_reasons": dict(self.stop_reasons),
            "flagged_slices": self.flagged_slices(),
        }
        if spacing_xyz is not None:
            out["volume_ml"] = round(voxels * float(np.prod(spacing_xyz)) / 1000.0, 3)
        return out


def compose_labels(
    objects: list[ObjectSegmentation],
    shape: tuple[int, int, int],
    overwrite: bool = False,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Write objects into one ``(Z, H, W)`` uint16 label map.

    Args:
        objects: in order; later ones never overwrite earlier ones (or voxels already set in
            ``base``) unless ``overwrite`` is True.
        shape: the volume shape.
        overwrite: let later objects replace earlier labels.
        base: an existing label map to add to (copied, not modified).
    """
    if base is not None and tuple(base.shape) != tuple(shape):
        raise ValueError(f"base label map has shape {base.shape}, expected {shape}")
    out = np.zeros(shape, np.uint16) if base is None else np.array(base, dtype=np.uint16)
    for obj in objects:
        for z, p in obj.slices.items():
            sl = out[z]
            sel = p.mask if overwrite else (p.mask & (sl == 0))
            sl[sel] = obj.label
    return out
