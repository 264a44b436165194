"""napari-sam-med: Segment Anything for CT and MRI tumours.

Public API (imported lazily, so ``import napari_sam_med`` stays fast and has no side effects):

    build_sam(name="lite_medsam", checkpoint=None, device="auto")
    save_checkpoint(model, path, metadata=None)
    SamPredictor(model)
    AutomaticMaskGenerator(model, **settings)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_sam": "napari_sam_med.build",
    "save_checkpoint": "napari_sam_med.build",
    "CheckpointError": "napari_sam_med.build",
    "SamConfig": "napari_sam_med.config",
    "SamPredictor": "napari_sam_med.predictor",
    "AutomaticMaskGenerator": "napari_sam_med.amg",
    "resolve_device": "napari_sam_med.device",
}

__all__ = [
    "AutomaticMaskGenerator",
    "CheckpointError",
    "SamConfig",
    "SamPredictor",
    "__version__",
    "build_sam",
    "resolve_device",
    "save_checkpoint",
]

if TYPE_CHECKING:  # pragma: no cover
    from .amg import AutomaticMaskGenerator
    from .build import CheckpointError, build_sam, save_checkpoint
    from .config import SamConfig
    from .device import resolve_device
    from .predictor import SamPredictor


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_sam_med' has no attribute {name!r}")
