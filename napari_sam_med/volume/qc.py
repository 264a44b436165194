"""Quality-control report of a segmented case: a PNG overlay of key slices, a JSON trace,
and the batch summary table.

The PNG has one row per object, zoomed on the object (twice its in-plane extent). Its
tiles are the object's prompted (key) slices, its largest slice, its first and last slices,
and up to three slices its QC trace flags (low predicted IoU or stability), each drawn with
the intensity preset, every label's contour and a translucent fill in the label's colour, and
the prompt box/points on key slices. Tiles keep the voxels' physical aspect ratio. Pillow only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..outputs import check_output, write_bytes_atomic, write_json_atomic
from ..preprocessing import apply_intensity, intensity_range
from .geometry import Volume
from .objects import ObjectSegmentation

if TYPE_CHECKING:
    from .manifest import CaseSpec
    from .segment import CaseResult

__all__ = ["qc_paths", "render_overlay", "summary_table", "write_bytes_atomic",
           "write_json_atomic", "write_qc"]  # fmt: skip

TILE = 256  # longer side of a tile, in pixels
CAPTION = 14  # caption band height
MAX_FLAGGED = 3
MAX_TILES = 8
MIN_WINDOW = 48  # smallest zoom window, in voxels
PALETTE = [
    (255, 64, 64), (64, 200, 255), (255, 200, 0), (80, 230, 80), (230, 90, 230),
    (255, 140, 40), (150, 120, 255), (0, 220, 170),
]  # fmt: skip


def qc_paths(qc_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``(png, json)`` paths of a case's QC report."""
    d = Path(qc_dir)
    return d / f"{name}_qc.png", d / f"{name}_qc.json"


def write_qc(
    qc_dir: str | os.PathLike,
    case: CaseSpec,
    volume: Volume,
    labels: np.ndarray,
    objects: list[ObjectSegmentation],
    preset: str,
    result: dict[str, Any],
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``<name>_qc.png`` and ``<name>_qc.json`` into ``qc_dir`` (created if needed).

    Args:
        qc_dir: the folder.
        case: a :class:`~napari_sam_med.volume.manifest.CaseSpec` (name, image, output).
        volume: the image (``array`` ``(z, y, x)``, spacing ``(x, y, z)``).
        labels: ``(z, y, x)`` label map as written.
        objects: per-object results with their QC traces.
        preset: the intensity preset used.
        result: the case summary (a ``CaseResult`` as a dict).
        overwrite: replace existing QC files (else :class:`OutputExistsError`).

    Returns:
        The PNG and JSON paths.
    """
    png, js = qc_paths(qc_dir, case.name)
    check_output(png, overwrite), check_output(js, overwrite)
    image = render_overlay(volume, labels, objects, preset, title=case.name)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes_atomic(png, buf.getvalue(), overwrite)
    trace = {
        "case": case.name,
        "image": str(case.image),
        "output": str(case.output),
        "preset": preset,
        "png": png.name,
        "summary": result,
        "objects": [
            {
                "label": o.label,
                "name": o.name,
                "key_prompts": [{"z": int(z), **p} for z, p in sorted(o.key_prompts.items())],
                "stop_reasons": dict(o.stop_reasons),
                "shown_slices": key_slices(o),
                "trace": o.qc_trace(),
            }
            for o in objects
        ],
    }
    write_json_atomic(js, trace, overwrite)
    return png, js


def key_slices(obj: ObjectSegmentation) -> list[int]:
    """The slices a QC overlay shows for ``obj`` (sorted, at most ``MAX_TILES``)."""
    chosen = [int(z) for z in obj.key_prompts]
    if obj.slices:
        chosen.append(max(obj.slices, key=lambda z: obj.slices[z].area))
        ext = obj.z_extent
        if ext is not None:
            chosen += list(ext)
        worst = sorted(obj.flagged_slices(), key=lambda z: obj.slices[z].iou)
        chosen += worst[:MAX_FLAGGED]
    return sorted(dict.fromkeys(chosen))[:MAX_TILES]


def render_overlay(
    volume: Volume,
    labels: np.ndarray,
    objects: list[ObjectSegmentation],
    preset: str,
    title: str = "",
):
    """The QC picture as a ``PIL.Image`` (RGB): one row of key-slice tiles per object."""
    from PIL import Image, ImageDraw

    value_range = intensity_range(volume.array, preset)
    rows = []
    for obj in objects:
        win = _window(obj, labels.shape[1:])
        tiles = [_tile(volume, labels, obj, z, preset, value_range, win) for z in key_slices(obj)]
        rows.append(tiles or [_blank(f"label {obj.label}: no slices")])
    width = max(sum(t.width for t in r) for r in rows)
    height = CAPTION + sum(max(t.height for t in r) for r in rows)
    canvas = Image.new("RGB", (max(width, 200), height), (0, 0, 0))
    ImageDraw.Draw(canvas).text((2, 1), title, fill=(255, 255, 255))
    y = CAPTION
    for r in rows:
        x = 0
        for t in r:
            canvas.paste(t, (x, y))
            x += t.width
        y += max(t.height for t in r)
    return canvas


def _window(obj: ObjectSegmentation, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` (exclusive ends): the object's in-plane extent over all its slices
    and prompt boxes, with as much margin again (at least ``MIN_WINDOW`` pixels across)."""
    ys, xs = [], []
    for p in obj.slices.values():
        if p.area:
            yy, xx = np.nonzero(p.mask)
            ys += [yy.min(), yy.max()]
            xs += [xx.min(), xx.max()]
    for prompt in obj.key_prompts.values():
        for x, y in [prompt["box"][0:2], prompt["box"][2:4]] if prompt.get("box") else []:
            xs.append(x)
            ys.append(y)
        for x, y in prompt.get("points", []):
            xs.append(x)
            ys.append(y)
    h, w = shape
    if not xs:
        return 0, h, 0, w
    out = []
    for lo, hi, n in ((min(ys), max(ys), h), (min(xs), max(xs), w)):
        half = max((hi - lo + 1), MIN_WINDOW / 2.0)
        c = (lo + hi + 1) / 2.0
        a, b = int(max(np.floor(c - half), 0)), int(min(np.ceil(c + half), n))
        out += [a, b]
    return out[0], out[1], out[2], out[3]


def _tile(volume, labels, obj, z, preset, value_range, win):
    from PIL import Image, ImageDraw

    y0, y1, x0, x1 = win
    h, w = y1 - y0, x1 - x0
    sx, sy = volume.spacing[0], volume.spacing[1]
    scale = TILE / max(w * sx, h * sy)
    tw, th = max(1, round(w * sx * scale)), max(1, round(h * sy * scale))
    grey = apply_intensity(volume.array[z, y0:y1, x0:x1], preset, value_range).astype(np.uint8)
    base = Image.fromarray(grey).resize((tw, th), Image.Resampling.BILINEAR)
    crop = labels[z, y0:y1, x0:x1].astype(np.int32)
    lab = np.asarray(Image.fromarray(crop).resize((tw, th), Image.Resampling.NEAREST))
    rgb = np.stack([np.asarray(base)] * 3, axis=-1).astype(np.float32)
    for value in np.unique(lab[lab > 0]):
        m = lab == value
        colour = np.asarray(_colour(int(value)), np.float32)
        rgb[m] = 0.65 * rgb[m] + 0.35 * colour
        rgb[_edge(m)] = colour
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    fx, fy = tw / w, th / h
    prompt = obj.key_prompts.get(z, {})
    if prompt.get("box"):
        bx0, by0, bx1, by1 = prompt["box"]
        box = [(bx0 - x0) * fx, (by0 - y0) * fy, (bx1 + 1 - x0) * fx, (by1 + 1 - y0) * fy]
        draw.rectangle(box, outline=(0, 255, 0))
    for (px, py), pl in zip(prompt.get("points", []), prompt.get("point_labels", []), strict=False):
        cx, cy = (px + 0.5 - x0) * fx, (py + 0.5 - y0) * fy
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], outline=(0, 255, 0) if pl else (255, 0, 0))
    out = Image.new("RGB", (tw, th + CAPTION), (0, 0, 0))
    out.paste(img, (0, CAPTION))
    ImageDraw.Draw(out).text((2, 1), _caption(obj, z), fill=_colour(obj.label))
    return out


def _caption(obj: ObjectSegmentation, z: int) -> str:
    p = obj.slices.get(z)
    if p is None:
        return f"L{obj.label} z{z} EMPTY"
    flag = " !" if p.weak else ""
    return f"L{obj.label} z{z} iou{p.iou:.2f} {p.source[:4]}{flag}"


def _blank(text: str):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (TILE, CAPTION + 20), (0, 0, 0))
    ImageDraw.Draw(img).text((2, 1), text, fill=(255, 255, 255))
    return img


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (1 px contour)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _colour(label: int) -> tuple[int, int, int]:
    return PALETTE[(label - 1) % len(PALETTE)]


# ---------------------------------------------------------------------- summary table
def summary_table(results: Sequence[CaseResult]) -> str:
    """A plain-text table: case, objects, voxels, volume mL, seconds, status; then one line
    per failed case with its error."""
    head = ("case", "objects", "voxels", "volume mL", "seconds", "status")
    rows = [
        (r.name, str(len(r.objects)) if r.objects else "-", str(r.voxels),
         f"{r.volume_ml:.2f}", f"{r.seconds:.1f}", r.status)
        for r in results
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    right = (False, True, True, True, True, False)

    def line(cells):
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out += [f"FAILED {r.name}: {r.error}" for r in results if r.status == "failed"]
    return "\n".join(out)
