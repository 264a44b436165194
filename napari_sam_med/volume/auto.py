"""The data engine's fully automatic stage over many volumes: ``sam-med auto DIR --out-dir OUT``.

Per volume: :func:`segment_automatic` (grid prompts, IoU and
stability filtering, NMS, 3D linking of per-slice masks by overlap) -> ``<case>_auto.nii.gz``
on the image's geometry and ``<case>_auto_qc.png`` (the slices holding the most labelled voxels,
with every object's contour). The batch writes ``auto_report.json`` and ``auto_report.csv``:
per case its status, objects (label, voxels, mL, slice span) and seconds. A volume that cannot
be read or segmented is reported by name with the reason and the batch goes on.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..outputs import check_output, write_bytes_atomic, write_json_atomic
from .geometry import Volume
from .io import case_name
from .segment import CaseProgress, ProgressFn

if TYPE_CHECKING:
    from ..modeling import PromptModel

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
QC_SLICES = 4


def find_volumes(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files and DICOM series folders named by ``inputs`` (files or folders).

    A folder contributes its volume files (``.nii[.gz]``, ``.nrrd``, ``.mha``, ``.mhd``; label
    files named ``*_label*``, ``*_mask*`` or ``*_seg*`` are skipped) and its sub-folders that
    hold ``.dcm`` files; a folder holding ``.dcm`` files itself is one series.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_file():
            found.append(path)
        elif any(path.glob("*.dcm")):
            found.append(path)
        else:
            for child in sorted(path.iterdir()):
                if child.is_file() and _is_image_file(child):
                    found.append(child)
                elif child.is_dir() and any(child.glob("*.dcm")):
                    found.append(child)
    return list(dict.fromkeys(found))


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith(VOLUME_SUFFIXES):
        return False
    return not re.search(r"_(label|labels|mask|seg|gt)(\.|_)", name)


def object_table(labels: np.ndarray, volume: Volume) -> list[dict[str, Any]]:
    """Per object of ``(z, y, x)`` ``labels``: label, voxels, volume in mL, first/last slice."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    counts = np.bincount(labels.ravel())
    rows = []
    for value in np.flatnonzero(counts)[1:] if counts.size > 1 else []:
        zs = np.flatnonzero((labels == value).any(axis=(1, 2)))
        rows.append(
            {
                "label": int(value),
                "voxels": int(counts[value]),
                "volume_ml": round(int(counts[value]) * voxel_ml, 3),
                "z_first": int(zs[0]),
                "z_last": int(zs[-1]),
            }
        )
    return rows


def write_auto_qc(
    path: Path, volume: Volume, labels: np.ndarray, preset: str, overwrite: bool = False
) -> Path:
    """A PNG of the ``QC_SLICES`` slices with the most labelled voxels, contours in colour."""
    from PIL import Image, ImageDraw

    from ..preprocessing import apply_intensity, intensity_range
    from .qc import _colour, _edge

    per_slice = (labels > 0).sum(axis=(1, 2))
    order = [int(z) for z in np.argsort(-per_slice, kind="stable")[:QC_SLICES]]
    zs = sorted(z for z in order if per_slice[z] > 0) or [labels.shape[0] // 2]
    value_range = intensity_range(volume.array, preset)
    tiles = []
    for z in zs:
        grey = np.clip(apply_intensity(volume.array[z], preset, value_range), 0, 255)
        rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
        for value in np.unique(labels[z])[1:]:
            rgb[_edge(labels[z] == value)] = _colour(int(value))
        tile = Image.fromarray(rgb)
        ImageDraw.Draw(tile).text((2, 2), f"z={z}  objects={len(np.unique(labels[z])) - 1}",
                                  fill=(255, 255, 0))  # fmt: skip
        tiles.append(tile)
    canvas = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue(), overwrite)
    return path


def run_auto_batch(
    model: PromptModel,
    images: Sequence[Path],
    out_dir: str | os.PathLike,
    segment: Callable[[PromptModel, Volume, str], np.ndarray],
    preset_for: Callable[[Volume], str],
    on_case: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    nonfinite_fill: float | None = None,
) -> list[dict[str, Any]]:
    """Segment every volume automatically; write labels, QC PNGs and the batch report.

    Args:
        model: a model from ``build_sam``.
        images: volume files or DICOM folders (see :func:`find_volumes`).
        out_dir: output folder (created).
        segment: ``(model, volume, preset) -> (z, y, x) labels`` (e.g. ``segment_automatic``
            with the chosen settings bound).
        preset_for: the intensity preset of a volume.
        on_case: called ``(index, total, name)`` before each case.
        overwrite: replace existing labels, QC images and reports (else
            ``OutputExistsError`` naming the first one, before any work).
        nonfinite_fill: replace NaN/Inf voxels with this value (else such a volume fails).

    Returns:
        The per-case report rows (also in ``auto_report.json`` / ``.csv``).
    """
    from .io import read_volume, write_labels

    out = Path(out_dir)
    outputs = [out / "auto_report.json", out / "auto_report.csv"]
    for name in map(case_name, images):
        outputs += [out / f"{name}_auto.nii.gz", out / f"{name}_auto_qc.png"]
    for path in outputs:
        check_output(path, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    report: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        name = case_name(image)
        if on_case is not None:
            on_case(i, len(images), name)
        row: dict[str, Any] = {"case": name, "image": str(image), "status": "ok", "error": ""}
        t0 = time.perf_counter()
        try:
            volume = read_volume(image, nonfinite_fill=nonfinite_fill)
            preset = preset_for(volume)
            labels = segment(model, volume, preset)
            label_path = out / f"{name}_auto.nii.gz"
            write_labels(labels, volume, label_path, overwrite=overwrite)
            objects = object_table(labels, volume)
            qc = write_auto_qc(out / f"{name}_auto_qc.png", volume, labels, preset, overwrite)
            row.update(output=str(label_path), qc_png=str(qc), preset=preset, objects=objects)
            row["status"] = "ok" if objects else "empty"
        except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the batch
            logger.error("%s: %s", image, exc)
            row.update(status="error", error=f"{type(exc).__name__}: {exc}", objects=[])
        row["seconds"] = round(time.perf_counter() - t0, 2)
        report.append(row)
        _write_report(out, report)
    return report


def _write_report(out: Path, report: list[dict[str, Any]]) -> None:
    # the reports grow after every case: checked once before the batch, then rewritten
    write_json_atomic(out / "auto_report.json", report, overwrite=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "status", "objects", "voxels", "volume_ml", "seconds", "error"])
    for r in report:
        objs = r.get("objects", [])
        writer.writerow([
            r["case"], r["status"], len(objs), sum(o["voxels"] for o in objs),
            round(sum(o["volume_ml"] for o in objs), 3), r["seconds"], r["error"],
        ])  # fmt: skip
    write_bytes_atomic(out / "auto_report.csv", buf.getvalue().encode(), overwrite=True)


# ------------------------------------------------------------------- automatic masks
def segment_automatic(
    model: PromptModel,
    volume: Volume,
    preset: str,
    slices: tuple[int, int] | None = None,
    link_iou: float = 0.3,
    min_voxels: int = 1,
    on_progress: ProgressFn | None = None,
    **amg_settings: Any,
) -> np.ndarray:
    """Run the automatic mask generator slice by slice and link the masks into 3D objects.

    On each slice, masks are painted largest first (so nested smaller masks stay visible);
    a slice's region joins the object of the previous slice it overlaps best when their IoU
    is at least ``link_iou`` (one-to-one, greedy by IoU), else it starts a new object.

    Args:
        model: a model from ``build_sam``.
        volume: the image (``array`` ``(z, y, x)``).
        preset: intensity preset name.
        slices: inclusive ``(z0, z1)`` range (all slices when None).
        link_iou: IoU needed to continue an object from one slice to the next.
        min_voxels: drop objects smaller than this.
        on_progress: called after each slice.
        **amg_settings: :class:`~napari_sam_med.amg.AMGSettings` fields (e.g.
            ``prompt_type="boxes"`` for LiteMedSAM/MedSAM, ``points_per_side``).

    Returns:
        ``(z, y, x)`` int32 labels ``0..K``, objects numbered by first appearance.
    """
    from ..amg import AutomaticMaskGenerator
    from ..preprocessing import apply_intensity, intensity_range

    arr = volume.array
    z0, z1 = (0, arr.shape[0] - 1) if slices is None else (int(slices[0]), int(slices[1]))
    if not 0 <= z0 <= z1 < arr.shape[0]:
        raise ValueError(f"slices {slices} must satisfy 0 <= z0 <= z1 <= {arr.shape[0] - 1}")
    gen = AutomaticMaskGenerator(model, **amg_settings)
    value_range = intensity_range(arr, preset)
    out = np.zeros(arr.shape, np.int32)
    next_id = 1
    for i, z in enumerate(range(z0, z1 + 1)):
        records = gen.generate(apply_intensity(arr[z], preset, value_range))
        regions = np.zeros(arr.shape[1:], np.int32)
        for k, rec in enumerate(sorted(records, key=lambda r: -r["area"])):
            regions[rec["segmentation"]] = k + 1
        ids, next_id = _link_regions(out[z - 1] if z > z0 else None, regions, next_id, link_iou)
        out[z] = ids[regions]
        if on_progress is not None:
            msg = f"{len(records)} masks"
            on_progress(CaseProgress(str(volume.path), 0, 1, 0, i + 1, z1 - z0 + 1, z, msg))
    counts = np.bincount(out.ravel(), minlength=next_id)
    keep = np.flatnonzero(counts >= max(min_voxels, 1))
    lut = np.zeros(next_id, np.int32)
    lut[keep[keep > 0]] = np.arange(1, int((keep > 0).sum()) + 1, dtype=np.int32)
    return lut[out]


def _link_regions(
    prev: np.ndarray | None, regions: np.ndarray, next_id: int, link_iou: float
) -> tuple[np.ndarray, int]:
    """Map each 2D region id of ``regions`` to a 3D object id (index 0 stays 0)."""
    n = int(regions.max())
    ids = np.zeros(n + 1, np.int32)
    if prev is not None and n and prev.any():
        both = (prev > 0) & (regions > 0)
        codes = prev[both].astype(np.int64) * (n + 1) + regions[both]
        pairs, inter = np.unique(codes, return_counts=True)
        p, c = pairs // (n + 1), pairs % (n + 1)
        area_p = np.bincount(prev.ravel(), minlength=next_id)
        area_c = np.bincount(regions.ravel(), minlength=n + 1)
        iou = inter / (area_p[p] + area_c[c] - inter)
        used: set[int] = set()
        for j in np.argsort(-iou):
            if iou[j] < link_iou:
                break
            if ids[c[j]] == 0 and int(p[j]) not in used:
                ids[c[j]] = p[j]
                used.add(int(p[j]))
    present = np.unique(regions[regions > 0])
    for r in present:
        if ids[r] == 0:
            ids[r] = next_id
            next_id += 1
    return ids, next_id
