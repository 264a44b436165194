"""npe2 reader: NIfTI, NRRD, MetaImage and DICOM folders, keeping the geometry.

The image layer gets ``scale`` = spacing and ``translate`` = origin, both in ``(z, y, x)``
order, and ``metadata["sam_med_geometry"]`` with the full geometry (spacing, origin and
direction as ITK orders them), so that labels saved from it land on exactly the same grid.
Files whose name ends in ``_label``/``_labels``/``_seg``/``_mask`` open as Labels layers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._layers import geometry_kwargs

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
LABEL_HINTS = ("_label", "_labels", "_seg", "_mask")


def _is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    for i, child in enumerate(path.iterdir()):
        if i > 200:
            break
        if child.suffix.lower() == ".dcm":
            return True
        if child.is_file() and child.suffix == "":
            try:
                with open(child, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def get_reader(path: str | list[str]) -> Any:
    """The reader function for ``path``, or None when it is not ours."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(os.fspath(path))
    name = p.name.lower()
    if name.endswith(SUFFIXES) or _is_dicom_folder(p):
        return read_layers
    return None


def read_layers(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """Read one volume as napari layer data (image or labels) with its geometry."""
    from ..volume.io import read_volume

    if isinstance(path, list):
        path = path[0]
    if str(path).lower().endswith(".dcm"):
        from ..volume.dicom_seg_read import is_seg_file

        if is_seg_file(path):
            from ._dicom import read_seg_layers

            return read_seg_layers(str(path))
    vol = read_volume(path)
    kwargs = geometry_kwargs(vol)
    stem = Path(os.fspath(path)).name.lower()
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    kwargs["name"] = Path(os.fspath(path)).name
    is_label = stem.endswith(LABEL_HINTS) and vol.array.dtype.kind in "iub"
    if not is_label:
        from ._display import ct_window

        window = ct_window(vol.array, vol.metadata.get("modality"))
        if window is not None:  # CT opens in the model's soft-tissue window, not min-max
            kwargs["contrast_limits"] = window
    return [(vol.array, kwargs, "labels" if is_label else "image")]
