"""Export annotated volumes as an MSD-style training set (the data engine's output).

Layout written under the dataset folder::

    imagesTr/<case>.nii.gz     the image (any readable format or DICOM series, re-written)
    labelsTr/<case>.nii.gz     its labels, on exactly the image grid
    logs/<case>.session.json   the plugin's prompt log, when the case came from a session
    dataset.json               MSD fields (name, modality, labels, numTraining, training)

:func:`discover_cases` reads such a folder back (or any MSD ``dataset.json`` or folder of
image/label pairs) for ``sam-med evaluate``. Exports add to an existing ``dataset.json`` (a
case already present is an error unless ``overwrite``), and every file is written atomically,
so ``training/`` (source ``msd``) and ``sam-med evaluate`` read the folder directly. Sources
are image/label pairs or saved plugin sessions: a ``X.session.json`` log next to its
``X.nii.gz`` labels (``format: napari-sam-med-session``; the image path is
``log["image"]["path"]``, label names come from ``log["objects"]``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputExistsError
from .outputs import write_json_atomic
from .volume.datasets import find_pairs, read_msd
from .volume.io import (
    case_name,  # noqa: F401  (re-exported: the plugin and CLI use it)
    check_label_matches,
    read_volume,
    write_labels,
    write_volume,
)
from .volume.session_log import labels_beside, load_session_log

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalCase:
    """One labelled volume: ``image`` and ``label`` files, optional ``modality`` (CT/MR)."""

    name: str
    image: str
    label: str
    modality: str | None = None


@dataclass(frozen=True)
class ExportItem:
    """One case to export.

    Attributes:
        image: image file or DICOM folder; label: label volume on the image grid.
        case: case name (default: from the image file name).
        label_names: names of label values (e.g. ``{1: "sarcoma"}``).
        log: the session log (JSON dict) to keep in ``logs/``, if any.
        image_volume, label_array: in-memory data used instead of reading ``image`` and
            ``label`` (the plugin exports what is on screen; ``label_array`` is ``(z, y, x)``
            on the grid of ``image_volume``).
    """

    image: str
    label: str
    case: str | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    log: dict[str, Any] | None = None
    image_volume: Any = None
    label_array: Any = None


def item_from_session(log_path: str | os.PathLike) -> ExportItem:
    """The export item of a saved plugin session (``X.session.json`` beside ``X.nii.gz``).

    Raises:
        ValueError: not a session log, no image path recorded, or a missing file (named).
    """
    log_path = Path(log_path)
    log = load_session_log(log_path)
    image = (log.get("image") or {}).get("path")
    if not image:
        raise ValueError(
            f"{log_path}: the log records no image path (image opened from memory?); "
            f"export it with --pair IMAGE LABELS instead"
        )
    if not Path(image).exists():
        raise ValueError(f"{log_path}: the session's image {image} does not exist")
    base = log_path.name.removesuffix(".session.json")
    label = labels_beside(log_path)
    if label is None:
        raise ValueError(
            f"{log_path}: no saved labels beside it (expected {base}.nii.gz, .nii, .nrrd or .mha)"
        )
    names = {
        int(o["label"]): str(o["name"])
        for o in log.get("objects") or []
        if isinstance(o, dict) and o.get("name") and str(o.get("label", "")).isdigit()
    }
    return ExportItem(str(image), str(label), case_name(image), names, log)


def _load_meta(path: Path, name: str, modality: str | None) -> dict[str, Any]:
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the existing dataset.json ({err})") from err
        if not isinstance(meta.get("training"), list):
            raise ValueError(f"{path}: existing dataset.json has no 'training' list")
    else:
        meta = {"name": name, "description": "exported by napari-sam-med",
                "tensorImageSize": "3D", "labels": {"0": "background"}, "training": []}  # fmt: skip
    if modality:
        old = (meta.get("modality") or {}).get("0")
        if old and old != modality:
            raise ValueError(f"{path}: dataset modality is {old}; cannot add {modality} cases")
        meta["modality"] = {"0": modality}
    return meta


def _merge_names(meta: dict[str, Any], names: dict[int, str], case: str) -> None:
    labels = meta.setdefault("labels", {"0": "background"})
    for value, name in sorted(names.items()):
        old = labels.get(str(value))
        if old is None:
            labels[str(value)] = name
        elif old != name:
            logger.warning(
                "case %s names label %d %r, the dataset %r; kept per case", case, value, name, old
            )


def export_dataset(
    items: list[ExportItem],
    out_dir: str | os.PathLike,
    name: str = "napari-sam-med",
    modality: str | None = None,
    label_names: dict[int, str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Write ``items`` into the MSD-style dataset at ``out_dir`` (created or extended).

    Args:
        items: the cases; their ``label_names`` are overridden by ``label_names``.
        modality: ``CT``/``MR``... stored as ``modality["0"]``.
        overwrite: replace cases whose name is already in the dataset (and stray files of
            the same name); else ``OutputExistsError``. ``dataset.json`` is always updated.
        progress: called with ``(done, total, case)`` after each case is written.

    Returns:
        The written ``dataset.json`` content.

    Raises:
        ValueError: unreadable files, labels not on the image grid, empty labels, duplicate
            case names (naming the files).
    """
    if not items:
        raise ValueError("nothing to export: give image/label pairs or session logs")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    meta = _load_meta(out / "dataset.json", name, modality)
    existing = {Path(e["image"]).name: i for i, e in enumerate(meta["training"])}
    seen: set[str] = set()
    for item in items:
        case = item.case or case_name(item.image)
        if case in seen:
            raise ValueError(f"two inputs give case name {case!r} (last: {item.image})")
        seen.add(case)
        fname = f"{case}.nii.gz"
        if fname in existing and not overwrite:
            raise OutputExistsError(
                f"{out}: case {case} already exported (use --overwrite / overwrite=True)"
            )
        entry = _export_one(item, out, case, fname, overwrite)
        names = {**item.label_names, **(label_names or {})}
        if names:
            entry["label_names"] = {str(k): v for k, v in sorted(names.items())}
        _merge_names(meta, names, case)
        if fname in existing:
            meta["training"][existing[fname]] = entry
        else:
            existing[fname] = len(meta["training"])
            meta["training"].append(entry)
        if progress is not None:
            progress(len(seen), len(items), case)
    meta["numTraining"] = len(meta["training"])
    write_json_atomic(out / "dataset.json", meta, overwrite=True)  # the index, extended
    return meta


def _export_one(
    item: ExportItem, out: Path, case: str, fname: str, overwrite: bool
) -> dict[str, Any]:
    image = item.image_volume if item.image_volume is not None else read_volume(item.image)
    if item.label_array is not None:
        labels = np.asarray(item.label_array)
        if labels.shape != image.array.shape:
            raise ValueError(
                f"{item.label}: labels have shape {labels.shape} (z, y, x) but the image "
                f"{image.array.shape}"
            )
    else:
        vol = read_volume(item.label)
        check_label_matches(vol, image)
        labels = vol.array
    if not (labels > 0).any():
        raise ValueError(f"{item.label}: label is empty (no voxel > 0); not exported")
    write_volume(image, out / "imagesTr" / fname, overwrite=overwrite)
    write_labels(labels, image, out / "labelsTr" / fname, overwrite=overwrite)
    entry: dict[str, Any] = {
        "image": f"./imagesTr/{fname}",
        "label": f"./labelsTr/{fname}",
        "source_image": str(Path(item.image).resolve())
        if Path(item.image).exists()
        else item.image,
    }
    if item.log is not None:
        write_json_atomic(out / "logs" / f"{case}.session.json", item.log, overwrite)
        entry["log"] = f"./logs/{case}.session.json"
    logger.info("exported %s (%s)", case, item.image)
    return entry


def parse_label_names(specs: list[str] | None) -> dict[int, str]:
    """``["1=sarcoma", "2=oedema"]`` -> ``{1: "sarcoma", 2: "oedema"}``."""
    out: dict[int, str] = {}
    for spec in specs or []:
        value, sep, label = spec.partition("=")
        if not sep or not value.strip().isdigit() or not label.strip() or int(value) == 0:
            raise ValueError(f"label name {spec!r}: expected VALUE=NAME with VALUE >= 1")
        out[int(value)] = label.strip()
    return out


# ------------------------------------------------------------------------- datasets
def discover_cases(path: str | os.PathLike) -> tuple[list[EvalCase], dict[int, str]]:
    """Labelled cases of an MSD ``dataset.json`` (file or its folder) or a folder of pairs.

    The rules are :mod:`napari_sam_med.volume.datasets`' (shared with ``training/``): folder
    layouts ``imagesTr/X[_0000].ext`` + ``labelsTr/X.ext`` (also ``images``/``labels``...), or
    ``X[_image].ext`` + ``X_label.ext`` (``_labels``, ``_mask``, ``_seg``, ``_gt``) side by side
    in the folder or any sub-folder (``STS_001/CT_image.nii.gz`` + ``CT_mask.nii.gz`` is case
    ``STS_001/CT``). DICOM series folders are left out (evaluation reads label volumes); the
    modality comes from ``dataset.json`` only (for a folder it is guessed later, per case).

    Returns:
        ``(cases, label_names)``; names keyed by label value (from ``dataset.json``, else empty).

    Raises:
        ValueError: unreadable JSON, missing files, or no pairs found (naming the path).
    """
    p = Path(path)
    if (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / "dataset.json").is_file()):
        found, names = read_msd(p, check_files=True)
        return [EvalCase(c.case, c.image, str(c.label), c.modality) for c in found], names
    if not p.is_dir():
        raise ValueError(f"{p}: expected a dataset.json or a folder of image/label pairs")
    found = find_pairs(p, dicom_series=False)
    return [EvalCase(c.case, c.image, str(c.label)) for c in found], {}
