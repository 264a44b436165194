"""napari layers <-> prompts and masks; the layers are the plugin's user interface.

* Prompt points live in one Points layer with a ``label`` feature (1 positive, 0 negative).
  A plain click adds a positive point, Shift+click a negative one.
* Boxes are rectangles in one Shapes layer (the last box drawn on a slice counts).
* Prompts are converted between napari data coordinates ``(z, y, x)`` (``(y, x)`` for 2D
  images) and SAM order (``(x, y)`` pixels of slice ``z``) only through
  :func:`napari_sam_med.preprocessing.zyx_to_slice_xy` / ``slice_xy_to_zyx``.
* Image geometry: ``scale`` is the spacing in ``(z, y, x)`` order and ``translate`` the origin
  in the same order; the full geometry (spacing, origin, direction as ITK orders them) is
  kept in ``metadata["sam_med_geometry"]`` so that saved labels round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..volume.prompt import SlicePrompt, coerce

GEOMETRY_KEY = "sam_med_geometry"
POSITIVE = (0.1, 0.9, 0.2, 1.0)
NEGATIVE = (0.95, 0.1, 0.1, 1.0)


# ----------------------------------------------------------------- geometry


def geometry_kwargs(volume: Any) -> dict[str, Any]:
    """napari layer kwargs (``scale``, ``translate``, ``metadata``) for a ``Volume``."""
    geometry = {
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": list(volume.direction),
        "shape_zyx": list(volume.array.shape),
        "path": str(volume.path) if volume.path is not None else None,
    }
    meta = {GEOMETRY_KEY: geometry}
    for key in ("modality", "format", "series_instance_uid"):
        if key in volume.metadata:
            meta[key] = volume.metadata[key]
    return {
        "scale": tuple(volume.spacing[::-1]),
        "translate": tuple(volume.origin[::-1]),
        "metadata": meta,
    }


def reference_volume(shape_zyx: tuple[int, ...], meta: dict[str, Any], scale=None, translate=None):
    """A ``Volume`` (zeros) carrying the geometry of a layer, to write labels onto.

    Uses ``metadata["sam_med_geometry"]`` when present, else the layer's ``scale`` and
    ``translate`` with an identity direction.
    """
    from ..volume.io import Volume

    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) == 2:
        shape = (1, *shape)
    geom = (meta or {}).get(GEOMETRY_KEY)
    zeros = np.zeros(shape, np.uint8)
    if geom is not None:
        if tuple(geom.get("shape_zyx", shape)) != shape:
            raise ValueError(
                f"labels have shape {shape} (z, y, x) but the image geometry in the layer "
                f"metadata is for {tuple(geom['shape_zyx'])}"
            )
        return Volume(zeros, geom["spacing"], geom["origin"], geom["direction"])
    sc = np.ones(3) if scale is None else np.asarray(scale, float)[-3:]
    tr = np.zeros(3) if translate is None else np.asarray(translate, float)[-3:]
    sc = np.concatenate([np.ones(3 - len(sc)), sc])
    tr = np.concatenate([np.zeros(3 - len(tr)), tr])
    return Volume(zeros, tuple(sc[::-1]), tuple(tr[::-1]))


def spacing_xyz(image_layer: Any) -> tuple[float, float, float] | None:
    """The voxel size ``(sx, sy, sz)`` of a volume layer (None for 2D images)."""
    geom = image_layer.metadata.get(GEOMETRY_KEY)
    if geom is not None:
        return tuple(float(v) for v in geom["spacing"])
    if image_layer.ndim - int(image_layer.rgb) < 3:
        return None
    return tuple(float(v) for v in image_layer.scale[-3:][::-1])


# ------------------------------------------------------------------- prompts


def prompts_from_layers(points_layer: Any, shapes_layer: Any) -> dict[int, SlicePrompt]:
    """All prompts on the layers, per slice (points and the last box drawn on it)."""
    from ..preprocessing import zyx_to_slice_xy  # lazily: it imports torch

    out: dict[int, SlicePrompt] = {}
    pts = np.asarray(points_layer.data)
    if len(pts):
        labels = _point_labels(points_layer, len(pts))
        zs, xy = zyx_to_slice_xy(pts[:, -_ndim(points_layer) :])
        for z in sorted(set(zs.tolist())):
            on = zs == z
            out[int(z)] = SlicePrompt(points=xy[on], point_labels=labels[on])
    for verts, kind in zip(shapes_layer.data, shapes_layer.shape_type, strict=True):
        if kind != "rectangle" or len(verts) < 2:
            continue
        zs, xy = zyx_to_slice_xy(np.asarray(verts)[:, -_ndim(shapes_layer) :])
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue  # a box still being drawn, or a click without drag
        z = int(zs[0])
        out[z] = out.get(z, SlicePrompt()).replace(box=(x0, y0, x1, y1))
    return out


def _ndim(layer: Any) -> int:
    return 3 if layer.ndim >= 3 else 2


def _point_labels(layer: Any, n: int) -> np.ndarray:
    feats = layer.features
    if "label" in feats and len(feats) == n:
        return np.asarray(feats["label"], dtype=np.int64)
    return np.ones(n, np.int64)


def prompts_to_layers(
    prompts: Mapping[int, SlicePrompt], points_layer: Any, shapes_layer: Any
) -> None:
    """Show ``prompts`` (``{z: prompt}``, SAM order) on the layers, replacing their content."""
    from ..preprocessing import slice_xy_to_zyx  # lazily: it imports torch

    pts, labs, boxes = [], [], []
    for z, p in sorted(prompts.items()):
        p = coerce(p)
        if p.points:
            pts.append(_to_layer(slice_xy_to_zyx(z, np.asarray(p.points)), points_layer))
            labs.extend(p.point_labels)
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
            boxes.append(_to_layer(slice_xy_to_zyx(z, corners), shapes_layer))
    nd = _ndim(points_layer)
    points_layer.selected_data = set()
    points_layer.data = np.concatenate(pts) if pts else np.zeros((0, nd))
    points_layer.features = {"label": np.asarray(labs, np.int64)}
    color_points(points_layer)
    shapes_layer.data = []
    if boxes:
        shapes_layer.add_rectangles(boxes)


def _to_layer(zyx: np.ndarray, layer: Any) -> np.ndarray:
    return zyx if _ndim(layer) == 3 else zyx[:, 1:]


def color_points(points_layer: Any) -> None:
    """Colour prompt points by their ``label`` feature (green positive, red negative)."""
    n = len(points_layer.data)
    if n:
        labels = _point_labels(points_layer, n)
        points_layer.face_color = np.where(labels[:, None] > 0, POSITIVE, NEGATIVE)


def set_point_label(points_layer: Any, positive: bool) -> None:
    """Make the next added point positive or negative (without recolouring selected ones)."""
    points_layer.selected_data = set()
    points_layer.feature_defaults = {"label": 1 if positive else 0}
    points_layer.current_face_color = POSITIVE if positive else NEGATIVE


def click_sign_callback(layer: Any, event: Any) -> None:
    """A drag callback run before napari's "add" mode: Shift or right click -> negative."""
    if event.type != "mouse_press":
        return
    # napari passes vispy key objects (str() is "<Key 'Shift'>", == "Shift" holds)
    negative = any(m == "Shift" for m in event.modifiers) or event.button == 2
    set_point_label(layer, positive=not negative)


def current_slice(image_layer: Any, viewer: Any) -> int:
    """The image's slice index at the viewer's current position (0 for a 2D image)."""
    if image_layer.ndim - (1 if image_layer.rgb else 0) < 3:
        return 0
    data_pos = image_layer.world_to_data(viewer.dims.point)
    z = int(round(float(data_pos[-3])))
    return int(np.clip(z, 0, image_layer.data.shape[0] - 1))


def go_to_slice(image_layer: Any, viewer: Any, z: int) -> None:
    """Move the viewer to slice ``z`` of the image (a no-op for 2D images)."""
    if image_layer.ndim - (1 if image_layer.rgb else 0) < 3:
        return
    world = image_layer.data_to_world([z, 0, 0])
    axis = viewer.dims.ndim - 3
    viewer.dims.set_point(axis, float(world[0]))


def paint_changes(atoms: Any, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The voxels one napari paint event changed: ``(flat indices, values before)``.

    ``atoms`` is the ``value`` of a Labels layer's ``paint`` event: a list of edits, each
    either a masked edit (``slice_key`` bounding box, ``mask`` or None, ``old_values``) or an
    ``(indices, old_values, new_values)`` tuple. Indices are in the layer's data order
    (``(z, y, x)``, or ``(y, x)`` for a 2D image, which is slice 0). Flat indices refer to
    the ``(Z, Y, X)`` labels; repeated voxels keep their first (original) value.

    Raises:
        ValueError: an edit of another form.
    """
    index, before = [], []
    for atom in atoms:
        if hasattr(atom, "slice_key"):
            sl = tuple(atom.slice_key)
            dims = shape_zyx[-len(sl) :]
            starts = [s.indices(n)[0] for s, n in zip(sl, dims, strict=True)]
            box = tuple(len(range(*s.indices(n))) for s, n in zip(sl, dims, strict=True))
            mask = np.ones(box, bool) if atom.mask is None else np.asarray(atom.mask, bool)
            coords = [c + o for c, o in zip(np.nonzero(mask), starts, strict=True)]
            old = np.asarray(atom.old_values)
            old = old[mask] if atom.mask is None else old.ravel()
        elif isinstance(atom, tuple) and len(atom) == 3:
            coords = [np.asarray(c).ravel() for c in atom[0]]
            old = np.broadcast_to(np.asarray(atom[1]).ravel(), coords[0].shape)
        else:
            raise ValueError(f"unknown paint edit of type {type(atom).__name__}")
        if len(coords) == 2:
            coords = [np.zeros_like(coords[0]), *coords]
        index.append(np.ravel_multi_index(tuple(coords), shape_zyx))
        before.append(np.asarray(old, np.int64))
    if not index:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(index), np.concatenate(before)


def label_colormap(colors: dict[int, Any]) -> Any:
    """A napari colormap showing each label value in its colour (background transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    mapping: dict[int | None, Any] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    mapping.update({int(k): tuple(v) for k, v in colors.items()})
    return DirectLabelColormap(color_dict=mapping)
