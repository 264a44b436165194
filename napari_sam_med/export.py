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
from .volume.io import (
    READ_SUFFIXES,
    case_name,  # noqa: F401  (re-exported: the plugin and CLI use it)
    check_label_matches,
    file_stem,
    file_suffix,
    read_volume,
    write_labels,
    write_volume,
)
from .volume.session_log import labels_beside, load_session_log

logger = logging.getLogger(__name__)
LABEL_SUFFIXES = ("_label", "_labels", "_mask", "_seg", "_gt")
_IMAGE_SUFFIXES = ("_image", "_img", "_0000")
_PAIR_DIRS = (("imagesTr", "labelsTr"), ("images", "labels"))


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

    Folder layouts: ``imagesTr/X[_0000].ext`` + ``labelsTr/X.ext`` (also ``images``/``labels``),
    or ``X[_image].ext`` + ``X_label.ext`` (``_labels``, ``_mask``, ``_seg``, ``_gt``) side by
    side in the folder or any sub-folder (``STS_001/CT_image.nii.gz`` + ``CT_mask.nii.gz`` is
    case ``STS_001/CT``).

    Returns:
        ``(cases, label_names)``; names keyed by label value (from ``dataset.json``, else empty).

    Raises:
        ValueError: unreadable JSON, missing files, or no pairs found (naming the path).
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return _cases_from_msd(p)
    if p.is_dir() and (p / "dataset.json").is_file():
        return _cases_from_msd(p / "dataset.json")
    if not p.is_dir():
        raise ValueError(f"{p}: expected a dataset.json or a folder of image/label pairs")
    cases = _pairs_in_folder(p)
    if not cases:
        raise ValueError(
            f"{p}: found no image/label pairs (expected imagesTr/ + labelsTr/, images/ + "
            f"labels/, or X.nii.gz + X_label.nii.gz)"
        )
    return cases, {}


def _cases_from_msd(path: Path) -> tuple[list[EvalCase], dict[int, str]]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the dataset.json ({err})") from err
    mods = meta.get("modality") or meta.get("channel_names") or {}
    modality = str(mods.get("0")) if isinstance(mods, dict) and "0" in mods else None
    names: dict[int, str] = {}
    for k, v in (meta.get("labels") or {}).items():
        if str(k).isdigit():
            names[int(k)] = str(v)
        elif isinstance(v, int):  # nnU-Net v2: {"tumour": 1}
            names[v] = str(k)
    names.pop(0, None)
    cases = []
    for i, entry in enumerate(meta.get("training") or []):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ValueError(f"{path}: training entry {i} needs 'image' and 'label', got {entry}")
        image, label = (path.parent / entry["image"]).resolve(), (path.parent / entry["label"])
        for f in (image, label):
            if not f.exists():
                raise ValueError(f"{path}: training entry {i}: {f} does not exist")
        cases.append(EvalCase(file_stem(image), str(image), str(label.resolve()), modality))
    if not cases:
        raise ValueError(f"{path}: no cases in 'training'")
    return cases, names


def _volumes(folder: Path) -> dict[str, Path]:
    ok = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    return {file_stem(f): f for f in ok if file_suffix(f) in READ_SUFFIXES and f.suffix != ".dcm"}


def _pairs_in_folder(root: Path) -> list[EvalCase]:
    for img_dir, lbl_dir in _PAIR_DIRS:
        if (root / img_dir).is_dir() and (root / lbl_dir).is_dir():
            labels = _volumes(root / lbl_dir)
            out = []
            for stem, img in _volumes(root / img_dir).items():
                lbl = labels.get(stem) or labels.get(stem.removesuffix("_0000"))
                if lbl is None:
                    logger.warning("%s: no label in %s; not evaluated", img, root / lbl_dir)
                    continue
                out.append(EvalCase(stem.removesuffix("_0000"), str(img), str(lbl)))
            return out
    out = []
    for folder in [root, *sorted(d for d in root.rglob("*") if d.is_dir())]:
        files = _volumes(folder)
        rel = folder.relative_to(root).as_posix()
        for stem, img in files.items():
            base = next((stem[: -len(s)] for s in _IMAGE_SUFFIXES if stem.endswith(s)), stem)
            if stem.endswith(LABEL_SUFFIXES) or not base:
                continue
            lbl = next((files[base + s] for s in LABEL_SUFFIXES if base + s in files), None)
            if lbl is not None:
                out.append(EvalCase(base if rel == "." else f"{rel}/{base}", str(img), str(lbl)))
    return out
