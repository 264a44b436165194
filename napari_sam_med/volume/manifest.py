"""The batch manifest: which volumes to segment, with which prompts, into which files.

A manifest is a JSON file (schema in ``docs/cli.md``)::

    {"space": "voxel",
     "cases": [{"image": "ct1.nii.gz", "output": "ct1_seg.nii.gz", "modality": "CT",
                "objects": [{"label": 1, "box3d": [x0, y0, z0, x1, y1, z1]},
                            {"label": 2, "box": [x0, y0, x1, y1], "slice": z},
                            {"label": 3, "points": [[x, y, z]], "point_labels": [1]},
                            {"label": 4, "text": "tumour", "text_slices": [z0, z1]}]}]}

Coordinates are voxel indices ``(x, y, z)`` as ITK orders them (boxes inclusive at both
ends), or LPS millimetres with ``"space": "world"`` (top level, per case or per object),
converted through :func:`~napari_sam_med.volume.geometry.world_to_index` once the image's
geometry is known (:func:`~.voxel_prompts.object_prompts`). Relative image paths resolve against the
manifest's folder. ``"text"`` (models trained with text prompts) may stand alone -- the
slices ``text_slices`` (voxel indices, default all) are searched for it -- or join any other
prompt of the object. Every fault raises :class:`ManifestError` naming the manifest file, the
case index, the field, the value and what was expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ManifestError
from .dicom_out import default_output_name, output_problem
from .io import file_stem

SPACES = ("voxel", "world")
_TOP_KEYS = {"cases", "space", "version", "description"}
_CASE_KEYS = {
    "image",
    "output",
    "name",
    "modality",
    "preset",
    "space",
    "series_uid",
    "component",
    "objects",
    "format",
}
_OBJECT_KEYS = {
    "label", "name", "space", "box3d", "box", "slice", "points", "point_labels", "text",
    "text_slices",
}  # fmt: skip


@dataclass
class ObjectSpec:
    """One object's prompt as written (not yet converted to voxels).

    Attributes:
        label: value in the label map (1..65535).
        name: display name.
        space: ``"voxel"`` or ``"world"``.
        box3d: ``[x0, y0, z0, x1, y1, z1]`` or None.
        box: ``[x0, y0, x1, y1]`` on ``slice``, or None.
        slice: the slice index (voxel) or z position in mm (world) of ``box``.
        points: ``[[x, y, z], ...]`` or None, with ``point_labels`` (1 = inside, 0 = outside).
        text: a text prompt (alone, or joining the other prompts) or None.
        text_slices: ``[z0, z1]`` voxel slices searched for a text-only prompt (None: all).
        where: ``"<file>: cases[i].objects[j]"`` for error messages.
    """

    label: int
    name: str
    space: str
    box3d: list[float] | None = None
    box: list[float] | None = None
    slice: float | None = None
    points: list[list[float]] | None = None
    point_labels: list[int] | None = None
    text: str | None = None
    text_slices: list[int] | None = None
    where: str = ""

    def to_json(self) -> dict[str, Any]:
        """The prompt as JSON (what a resume fingerprint and the QC trace record)."""
        keys: tuple[str, ...] = ("label", "name", "space", "box3d", "box", "slice", "points")
        keys += ("point_labels", "text", "text_slices")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class CaseSpec:
    """One case: an image, its prompts and where its labels go.

    Attributes:
        index: position in the manifest.
        image: the image file or DICOM folder (absolute).
        output: the label file to write (absolute).
        name: a unique case name (default: the output's file name without suffix).
        modality / preset: guide the intensity preset (``preset`` wins).
        series_uid / component: pick a DICOM series or a volume of a 4D file.
        objects: the prompts, in label-map priority order.
        source: the manifest path, or ``"command line"``.
        format: ``"seg"``/``"rtstruct"`` (DICOM, see :mod:`.dicom_out`) or None (by suffix).
    """

    index: int
    image: Path
    output: Path
    name: str
    objects: list[ObjectSpec]
    modality: str | None = None
    preset: str | None = None
    series_uid: str | None = None
    component: int | None = None
    source: str = "command line"
    format: str | None = None


def load_manifest(path: str | os.PathLike, out_dir: str | os.PathLike | None = None):
    """Read and validate a manifest file.

    Args:
        path: the JSON file.
        out_dir: where outputs go: a case without ``"output"`` writes
            ``out_dir/<image name>_seg.nii.gz``, and relative outputs resolve against it
            (against the manifest's folder when ``out_dir`` is None).

    Returns:
        ``list[CaseSpec]`` in manifest order.

    Raises:
        ManifestError: unreadable JSON or any schema fault.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"manifest {path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    return parse_manifest(data, f"manifest {path}", path.resolve().parent, out_dir)


def parse_manifest(
    data: Any, source: str, base_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> list[CaseSpec]:
    """Validate manifest ``data`` (already parsed JSON); see :func:`load_manifest`.

    ``source`` names the origin in error messages (``"manifest cases.json"``,
    ``"command line"``); ``base_dir`` is the folder relative image paths resolve against.
    """
    if not isinstance(data, dict):
        _fail(source, "the top level", data, 'an object {"cases": [...]}')
    _no_unknown(data, _TOP_KEYS, source, "the top level")
    space = _space(data.get("space", "voxel"), source, "space")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        _fail(source, "cases", cases, "a non-empty list of case objects")
    base = Path(base_dir)
    out_base = Path(out_dir).resolve() if out_dir is not None else base
    specs = [_parse_case(c, i, source, base, out_base, out_dir, space) for i, c in enumerate(cases)]
    _check_unique(specs, source)
    return specs


def _parse_case(
    case: Any, i: int, source: str, base: Path, out_base: Path, out_dir: Any, space: str
) -> CaseSpec:
    where = f"cases[{i}]"
    if not isinstance(case, dict):
        _fail(source, where, case, "an object with 'image' and 'objects'")
    _no_unknown(case, _CASE_KEYS, source, where)
    image = _path(case.get("image"), source, f"{where}.image", base)
    if "output" in case:
        output = _path(case["output"], source, f"{where}.output", out_base)
    elif out_dir is not None:
        output = out_base / default_output_name(file_stem(image), case.get("format"))
    else:
        _fail(source, f"{where}.output", None, "a label file path (or run with --out-dir)")
    if problem := output_problem(case.get("format"), output):
        _fail(source, f"{where}.{problem[0]}", problem[1], problem[2])
    name = case.get("name", file_stem(output))
    for key in ("name", "modality", "preset", "series_uid"):
        if key in case and not (isinstance(case[key], str) and case[key].strip()):
            _fail(source, f"{where}.{key}", case[key], "a non-empty string")
    if any(c in str(name) for c in "/\\") or str(name).startswith("."):
        _fail(source, f"{where}.name", name, "a file-name-safe name (no / or \\, no leading .)")
    comp = case.get("component")
    if comp is not None and (not _is_int(comp) or comp < 0):
        _fail(source, f"{where}.component", comp, "an integer >= 0")
    space = _space(case.get("space", space), source, f"{where}.space")
    objs = case.get("objects")
    if not isinstance(objs, list) or not objs:
        _fail(source, f"{where}.objects", objs, "a non-empty list of objects")
    objects = [
        _parse_object(o, f"{where}.objects[{j}]", j, source, space) for j, o in enumerate(objs)
    ]
    labels = [o.label for o in objects]
    dup = sorted({v for v in labels if labels.count(v) > 1})
    if dup:
        _fail(source, f"{where}.objects[].label", dup, "a distinct label per object")
    return CaseSpec(
        i, image, output, str(name), objects, case.get("modality"), case.get("preset"),
        case.get("series_uid"), comp, source, case.get("format"),
    )  # fmt: skip


def _parse_object(obj: Any, where: str, j: int, source: str, space: str) -> ObjectSpec:
    if not isinstance(obj, dict):
        _fail(source, where, obj, "an object with a 'box3d', 'box' + 'slice' or 'points' prompt")
    _no_unknown(obj, _OBJECT_KEYS, source, where)
    label = obj.get("label", j + 1)
    if not _is_int(label) or not 1 <= label <= 65535:
        _fail(source, f"{where}.label", label, "an integer in 1..65535 (0 is background)")
    name = obj.get("name", f"object {label}")
    spec = ObjectSpec(int(label), str(name), _space(obj.get("space", space), source, where))
    spec.where = f"{source}: {where}"
    has = [k for k in ("box3d", "box", "points") if k in obj]
    if not has and "text" not in obj:
        _fail(source, where, obj, "one of 'box3d', 'box' (with 'slice'), 'points' or 'text'")
    if "box3d" in obj and len(has) > 1:
        _fail(source, where, has, "'box3d' alone (do not mix it with 'box' or 'points')")
    _text(obj, spec, source, where, has)
    if "box3d" in obj:
        spec.box3d = _numbers(obj["box3d"], 6, source, f"{where}.box3d", "[x0, y0, z0, x1, y1, z1]")
        _ordered(spec.box3d, (0, 1, 2), (3, 4, 5), source, f"{where}.box3d")
    if "box" in obj:
        spec.box = _numbers(obj["box"], 4, source, f"{where}.box", "[x0, y0, x1, y1]")
        _ordered(spec.box, (0, 1), (2, 3), source, f"{where}.box")
        if "slice" not in obj:
            _fail(source, f"{where}.slice", None, "the slice of 'box' (z index, or mm in world)")
        spec.slice = _numbers([obj["slice"]], 1, source, f"{where}.slice", "a number")[0]
    elif "slice" in obj:
        _fail(source, f"{where}.slice", obj["slice"], "'slice' only together with 'box'")
    if "points" in obj:
        spec.points, spec.point_labels = _points(obj, source, where)
    elif "point_labels" in obj:
        _fail(source, f"{where}.point_labels", obj["point_labels"], "only together with 'points'")
    return spec


def _points(obj: dict, source: str, where: str) -> tuple[list[list[float]], list[int]]:
    pts = obj["points"]
    if not isinstance(pts, list) or not pts:
        _fail(source, f"{where}.points", pts, "a non-empty list of [x, y, z]")
    points = [
        _numbers(p, 3, source, f"{where}.points[{k}]", "[x, y, z]") for k, p in enumerate(pts)
    ]
    labels = obj.get("point_labels", [1] * len(points))
    if (
        not isinstance(labels, list)
        or len(labels) != len(points)
        or not all(_is_int(v) and v in (0, 1) for v in labels)
    ):
        _fail(
            source, f"{where}.point_labels", labels,
            f"a list of {len(points)} values, each 1 (inside) or 0 (outside)",
        )  # fmt: skip
    if 1 not in labels and "box" not in obj:
        _fail(source, f"{where}.point_labels", labels, "at least one positive (1) point")
    return points, [int(v) for v in labels]


def _text(obj: dict, spec: ObjectSpec, source: str, where: str, others: list[str]) -> None:
    if "text" in obj:
        if not (isinstance(obj["text"], str) and obj["text"].strip()):
            _fail(source, f"{where}.text", obj["text"], "a non-empty string, e.g. 'tumour'")
        spec.text = obj["text"].strip()
    if "text_slices" in obj:
        z = obj["text_slices"]
        ok = isinstance(z, list) and len(z) == 2 and all(_is_int(v) and v >= 0 for v in z)
        if not ok or z[0] > z[1]:
            _fail(source, f"{where}.text_slices", z, "[z0, z1]: voxel slice indices, z0 <= z1")
        if spec.text is None or others:
            _fail(source, f"{where}.text_slices", z, "only with a 'text' prompt on its own")
        spec.text_slices = [int(z[0]), int(z[1])]


# ------------------------------------------------------------------- validation helpers
def _fail(source: str, where: str, value: Any, expected: str):
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    raise ManifestError(f"{source}: {where} = {shown}; expected {expected}")


def _no_unknown(d: dict, allowed: set, source: str, where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        _fail(source, f"{where} key {extra[0]!r}", d[extra[0]], f"one of {sorted(allowed)}")


def _space(value: Any, source: str, where: str) -> str:
    if value not in SPACES:
        _fail(source, where, value, "'voxel' (indices, default) or 'world' (LPS mm)")
    return value


def _path(value: Any, source: str, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        _fail(source, where, value, "a file path (relative to the manifest's folder or absolute)")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(value: Any, n: int, source: str, where: str, expected: str) -> list[float]:
    ok = isinstance(value, list) and len(value) == n
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not all(np.isfinite(v) for v in value):
        _fail(source, where, value, f"{n} finite numbers {expected}")
    return [float(v) for v in value]


def _ordered(vals: list[float], lo: tuple, hi: tuple, source: str, where: str) -> None:
    if any(vals[a] > vals[b] for a, b in zip(lo, hi, strict=True)):
        _fail(source, where, vals, "min corner first, then max corner (each max >= its min)")


def _check_unique(specs: list[CaseSpec], source: str) -> None:
    for what in ("output", "name"):
        seen: dict[Any, int] = {}
        for s in specs:
            key = getattr(s, what)
            if key in seen:
                _fail(source, f"cases[{s.index}].{what}", str(key),
                      f"a value distinct from cases[{seen[key]}]")  # fmt: skip
            seen[key] = s.index
