"""A manifest object's prompt in voxel indices of its image, ready for the 3D engine.

The manifest (:mod:`.manifest`) is read before any image; once an image's geometry is known,
:func:`object_prompts` converts an object's prompt (voxel indices or LPS mm) into a 3D box or
one :class:`~.prompt.SlicePrompt` per key slice, and checks that it lies inside the volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ManifestError
from .geometry import Volume, world_to_index
from .manifest import ObjectSpec
from .prompt import SlicePrompt


@dataclass
class VoxelPrompt:
    """An object's prompt in voxel indices, ready for the 3D engine.

    ``box3d`` (``[x0, y0, z0, x1, y1, z1]``, inclusive), ``key_prompts``
    (``{z: SlicePrompt}`` with a box and/or points ``(x, y)`` of slice z) or, for a text-only
    prompt, neither; ``text`` may join either, ``text_range`` limits the search.
    """

    label: int
    name: str
    box3d: list[float] | None = None
    key_prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    text: str | None = None
    text_range: tuple[int, int] | None = None


def object_prompts(spec: ObjectSpec, volume: Volume) -> VoxelPrompt:
    """Convert one object's prompt to voxel indices of ``volume`` and check its bounds.

    World coordinates (LPS mm) go through ``world_to_index``; a world box becomes the voxel
    box enclosing its corners. Slices are rounded to the nearest index.

    Raises:
        ManifestError: a prompt outside the volume, or a voxel slice that is not an integer.
    """
    size = volume.shape_xyz
    world = spec.space == "world"
    out = VoxelPrompt(spec.label, spec.name, text=spec.text)
    if spec.text_slices is not None:
        z0, z1 = spec.text_slices
        if z1 > size[2] - 1:
            raise ManifestError(
                f"{spec.where}.text_slices: {spec.text_slices} lies outside the volume; "
                f"expected slices in 0..{size[2] - 1}"
            )
        out.text_range = (z0, z1)
    if spec.box3d is not None:
        b = spec.box3d
        if world:
            b = _enclosing_box(volume, [b[0], b[1], b[2]], [b[3], b[4], b[5]])
        out.box3d = _in_grid(b, (0, 1, 2, 0, 1, 2), size, spec, "box3d")
        out.box3d[2], out.box3d[5] = round(out.box3d[2]), round(out.box3d[5])
        return out
    if spec.box is not None:
        x0, y0, x1, y1 = spec.box
        if spec.slice is None:  # the manifest's reader requires it with a box
            raise ManifestError(f"{spec.where}.slice: missing; expected the box's slice")
        if world:
            b = _enclosing_box(volume, [x0, y0, spec.slice], [x1, y1, spec.slice])
            z = (b[2] + b[5]) / 2.0
            box = [b[0], b[1], b[3], b[4]]
        else:
            box, z = [x0, y0, x1, y1], _voxel_slice(spec.slice, spec, "slice")
        box = _in_grid(box, (0, 1, 0, 1), size, spec, "box")
        zi = round(_in_grid([z], (2,), size, spec, "slice")[0])
        out.key_prompts[zi] = SlicePrompt(box=(box[0], box[1], box[2], box[3]))
    if spec.points is not None:
        pts = np.asarray(spec.points, dtype=np.float64)
        if world:
            pts = np.atleast_2d(world_to_index(volume, pts))
        for k, (p, lab) in enumerate(zip(pts.tolist(), spec.point_labels or [], strict=True)):
            x, y, z = _in_grid(p, (0, 1, 2), size, spec, f"points[{k}]")
            zi = round(z) if world else _voxel_slice(z, spec, f"points[{k}]")
            key = out.key_prompts.get(zi, SlicePrompt())
            out.key_prompts[zi] = key.add_points([(x, y)], [int(lab)])
    for zi, key in out.key_prompts.items():
        if key.box is None and 1 not in key.point_labels:
            raise ManifestError(
                f"{spec.where}.points: slice {zi} has only negative points; "
                "expected at least one positive point (or a box) on every prompted slice"
            )
    return out


def _enclosing_box(volume: Volume, lo: list[float], hi: list[float]) -> list[float]:
    """Voxel box ``[x0, y0, z0, x1, y1, z1]`` enclosing a world box's 8 corners."""
    corners = np.array(
        [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
    )
    ijk = np.atleast_2d(world_to_index(volume, corners))
    return [float(v) for v in np.round(np.concatenate([ijk.min(0), ijk.max(0)]), 4).tolist()]


def _in_grid(
    vals: list[float], axes: tuple, size: tuple, spec: ObjectSpec, key: str
) -> list[float]:
    """Check values against the grid (half a voxel of slack in world space, then clipped)."""
    slack = 0.5 if spec.space == "world" else 0.0
    out = []
    for v, ax in zip(vals, axes, strict=True):
        if not -slack <= v <= size[ax] - 1 + slack:
            raise ManifestError(
                f"{spec.where}.{key}: value {_fmt(vals)} ({'xyz'[ax]} = {v:g}) lies outside the "
                f"volume; expected {'xyz'[ax]} in 0..{size[ax] - 1} (voxel indices, size x, y, z "
                f"= {tuple(size)}){' after conversion from LPS mm' if slack else ''}"
            )
        out.append(float(min(max(v, 0.0), size[ax] - 1)))
    return out


def _voxel_slice(z: float, spec: ObjectSpec, key: str) -> int:
    if float(z) != int(z):
        raise ManifestError(f"{spec.where}.{key}: z = {z:g}; expected an integer slice index")
    return int(z)


def _fmt(vals: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in vals) + "]"
