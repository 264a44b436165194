"""npe2 writer: a Labels layer to NIfTI, NRRD or MetaImage on its source image's grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layers import reference_volume


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write labels with the geometry kept in the layer metadata (else scale/translate).

    Args:
        path: target ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` file.
        data: ``(z, y, x)`` (or ``(y, x)``) integer labels.
        meta: the layer attributes napari passes (``metadata``, ``scale``, ``translate``).
    """
    from ..volume.io import write_labels

    arr = np.asarray(data)
    ref = reference_volume(
        arr.shape, meta.get("metadata") or {}, meta.get("scale"), meta.get("translate")
    )
    # napari's save dialog has already asked before replacing an existing file
    out = write_labels(arr.reshape(ref.array.shape), ref, path, overwrite=True)
    return [str(out)]
