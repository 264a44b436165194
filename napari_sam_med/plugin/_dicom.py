"""DICOM SEG in napari: read a SEG as a Labels layer, write a Labels layer as a SEG, and
take a label map into a session as committed objects the user can refine.

Object names and colours travel in the layer metadata under ``"sam_med_objects"``
(``{label: {"name": str, "color": [r, g, b, a] in 0..1}}``); the SAM-Med widget keeps it
up to date on its labels layer, the SEG reader fills it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._annotate import record_paint
from ._layers import GEOMETRY_KEY, geometry_kwargs, label_colormap

OBJECTS_KEY = "sam_med_objects"


def read_seg_layers(path: str) -> list[tuple[Any, dict[str, Any], str]]:
    """A SEG file as one Labels layer on its source series' grid (found beside the SEG)."""
    from ..volume.dicom_seg_read import find_source_series, read_seg

    reference = find_source_series(path)
    seg = read_seg(path, reference)
    kwargs = geometry_kwargs(reference)
    objects = {
        int(v): {"name": seg.names[v], "color": [c / 255 for c in seg.colors.get(v, (255,) * 3)]
                 + [1.0]}
        for v in seg.names
    }  # fmt: skip
    kwargs["metadata"][OBJECTS_KEY] = objects
    kwargs["metadata"]["series_instance_uid"] = reference.metadata.get("series_instance_uid")
    kwargs["name"] = Path(os.fspath(path)).name
    kwargs["colormap"] = label_colormap({k: o["color"] for k, o in objects.items()})
    return [(seg.labels, kwargs, "labels")]


def source_volume(meta: dict[str, Any]) -> Any:
    """The DICOM series behind a layer's metadata (its geometry's ``path`` and series UID).

    Raises:
        ValueError: the layer did not come from a DICOM series (says what to save instead).
    """
    from ..volume.io import VolumeError, read_volume

    geom = (meta or {}).get(GEOMETRY_KEY) or {}
    folder = geom.get("path")
    if meta.get("format") != "dicom" or not folder:
        raise VolumeError(
            "these labels were not drawn on a DICOM series (no DICOM source in the layer "
            "metadata); save them as .nii.gz, .nrrd or .mha instead"
        )
    return read_volume(folder, series_uid=meta.get("series_instance_uid"))


def segments_of(labels: np.ndarray, meta: dict[str, Any]) -> list[Any]:
    """One :class:`~napari_sam_med.volume.dicom_seg.SegmentInfo` per value present, named and
    coloured from the layer metadata (objects without voxels are left out)."""
    from ..volume.dicom_seg import PALETTE, SegmentInfo

    objects = {int(k): v for k, v in ((meta or {}).get(OBJECTS_KEY) or {}).items()}
    out = []
    for v in (int(x) for x in np.unique(labels) if x != 0):
        o = objects.get(v, {})
        rgb = tuple(int(round(c * 255)) for c in o["color"][:3]) if "color" in o else None
        out.append(SegmentInfo(v, str(o.get("name", f"object {v}")),
                               rgb or PALETTE[(v - 1) % len(PALETTE)]))  # fmt: skip
    return out


def write_seg_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer: a Labels layer drawn on a DICOM series as a DICOM SEG (``.dcm``).

    Refuses (ValueError) a layer that did not come from DICOM, an existing file, or labels
    whose grid differs from the series.
    """
    from ..volume.dicom_seg import write_seg

    layer_meta = meta.get("metadata") or {}
    volume = source_volume(layer_meta)
    labels = np.asarray(data).reshape(volume.array.shape)
    return [str(write_seg(labels, volume, path, segments_of(labels, layer_meta)))]


def import_labels(session: Any, labels: np.ndarray, objects: dict[int, dict] | None) -> list[int]:
    """Add a label map's objects to a session as committed objects, ready to refine.

    Each value becomes an object (name and colour from ``objects`` when given) whose voxels
    are recorded as a brush edit, so the import is undoable and replays from the session log.
    Voxels the session already labels are kept (never overwritten).

    Returns:
        The label values added.
    """
    labels = np.asarray(labels)
    if labels.shape != session.shape:
        raise ValueError(f"labels of shape {labels.shape} do not fit the image {session.shape}")
    objects = {int(k): v for k, v in (objects or {}).items()}
    added = []
    for value in (int(v) for v in np.unique(labels) if v != 0):
        if value in session.labels_in_use() or np.any(session.labels == value):
            raise ValueError(f"label {value} is already used in this session; relabel first")
        o = objects.get(value, {})
        session.new_object(o.get("name"), value, o.get("color"))
        index = np.flatnonzero((labels.ravel() == value) & (session.labels.ravel() == 0))
        before = session.labels.flat[index].copy()
        session.labels.flat[index] = value
        record_paint(session, index, before)
        added.append(value)
    return added


def layer_objects(session: Any) -> dict[int, dict[str, Any]]:
    """The ``sam_med_objects`` metadata for a session's objects."""
    return {int(o.label): {"name": o.name, "color": list(o.color)} for o in session.objects}
