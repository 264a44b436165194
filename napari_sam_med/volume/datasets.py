"""Dataset discovery: which image and label files make up the cases of a dataset.

The one set of rules used by ``sam-med evaluate`` / ``export``
(:func:`napari_sam_med.export.discover_cases`) and by ``training/`` (``training.cases``):

* **MSD** ``dataset.json`` (:func:`read_msd`): ``"training": [{"image", "label"}]`` with paths
  relative to the JSON's folder, ``"labels"`` names (``{"1": "tumour"}`` or nnU-Net v2's
  ``{"tumour": 1}``), ``"modality"`` or ``"channel_names"`` (``{"0": "CT"}``); ``"test"``
  entries (images without labels) when labels are not required.
* **Folder of pairs** (:func:`find_pairs`), searched recursively, matched by name:

  1. sibling folders ``images/X.ext`` + ``labels/X.ext`` (:data:`IMAGE_DIRS` with a
     :data:`LABEL_DIRS` sibling: ``imagesTr``/``labelsTr``, ``image``/``label``, ``masks``...;
     an image ``X_0000.ext`` also matches the label ``X.ext``). A **DICOM series** is an
     image folder of ``.dcm`` files whose label folder holds exactly one file (an RTSTRUCT
     ``.dcm`` or a label volume): ``STS_001/CT/image/*.dcm`` + ``STS_001/CT/mask/RS.dcm`` is
     case ``STS_001/CT``.
  2. suffixed files side by side: ``X[_image|_img|_0000].ext`` + ``X_mask.ext`` (or
     ``_label``, ``_labels``, ``_seg``, ``_gt``; the first that exists in that order):
     ``STS_001/CT_image.nii.gz`` + ``CT_mask.nii.gz`` is case ``STS_001/CT``.

  Hidden files (``.name``) and single ``.dcm`` files are never volumes of a pair.
  The **patient** of a case is the first folder of its path below the root that is not an
  image/label folder (``STS_001/CT_image.nii.gz`` -> ``STS_001``), else the case name. The
  **modality** is read from the case name (:func:`modality_from_name`).
* **CSV case table** (:func:`read_csv`): columns ``image`` and ``label`` (paths relative to
  the CSV; ``label`` optional when labels are not required) and optionally ``case`` (default:
  the image's file name), ``patient`` (default: the case name) and ``modality`` (default:
  read from the case name), as ``training/splits/dev_pool.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import READ_SUFFIXES, file_stem, file_suffix

logger = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "imagesTr", "image", "imgs")
LABEL_DIRS = ("labels", "labelsTr", "label", "masks", "mask", "segmentations", "seg")
IMAGE_SUFFIXES = ("_image", "_img", "_0000")
LABEL_SUFFIXES = ("_mask", "_label", "_labels", "_seg", "_gt")
MODALITY_TOKENS = ("CT", "MR", "MRI", "T1", "T2", "FLAIR", "T1C", "PET")
NO_PAIRS_HINT = "expected imagesTr/ + labelsTr/, images/ + labels/, or X.nii.gz + X_label.nii.gz"


@dataclass(frozen=True)
class Case:
    """One image volume with its label (a label volume or an RTSTRUCT file).

    Attributes:
        case: unique name (e.g. ``STS_001/CT``).
        patient: patient id; splits never separate cases of one patient.
        image: a volume file or a DICOM series folder.
        label: a label volume file, an RTSTRUCT ``.dcm``, or ``None`` (unlabelled).
        modality: ``CT``/``MR``/... when known (chooses the intensity preset).
    """

    case: str
    patient: str
    image: str
    label: str | None = None
    modality: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """The case as a plain dict (the MONAI data item)."""
        return {
            "case": self.case,
            "patient": self.patient,
            "image": self.image,
            "label": self.label,
            "modality": self.modality,
        }


# ------------------------------------------------------------------------ names
def modality_from_name(name: str) -> str | None:
    """``"CT"``/``"MR"``/``"PET"`` when a token of ``name`` (split on ``_ - / .``) names a
    modality (``MR``, ``MRI``, ``T1``, ``T2``, ``T1C``, ``FLAIR`` are MR), else ``None``."""
    for token in re.split(r"[_\-/.\s]+", name.upper()):
        if token in MODALITY_TOKENS:
            return "CT" if token == "CT" else ("PET" if token == "PET" else "MR")
    return None


def strip_image_suffix(stem: str) -> str:
    """``stem`` without the first of :data:`IMAGE_SUFFIXES` it ends with (``X_image`` -> ``X``)."""
    return next((stem[: -len(s)] for s in IMAGE_SUFFIXES if stem.endswith(s)), stem)


def patient_of(rel: Path, case: str) -> str:
    """The first folder of ``rel`` (an image path below the root) that is not an image/label
    folder, else ``case``."""
    parts = [p for p in rel.parts[:-1] if p not in IMAGE_DIRS + LABEL_DIRS]
    return parts[0] if parts else case


def volume_files(folder: Path) -> dict[str, Path]:
    """The readable volume files of ``folder`` by name without suffix, in file-name order
    (hidden files and single ``.dcm`` files left out)."""
    return {
        file_stem(p): p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and file_suffix(p) in READ_SUFFIXES
        and file_suffix(p) != ".dcm"
    }


def is_dicom_dir(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``.dcm`` files (a DICOM series)."""
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


# ------------------------------------------------------------------------- MSD
def msd_label_names(labels: Any) -> dict[int, str]:
    """Label names by value of an MSD ``"labels"`` field (``{"1": "tumour"}``, or nnU-Net
    v2's ``{"tumour": 1}``), background (0) dropped."""
    names: dict[int, str] = {}
    for key, value in (labels if isinstance(labels, dict) else {}).items():
        if str(key).isdigit():
            names[int(key)] = str(value)
        elif isinstance(value, int):
            names[value] = str(key)
    names.pop(0, None)
    return names


def msd_modality(meta: dict[str, Any]) -> str | None:
    """Channel 0's modality of an MSD ``dataset.json`` (``modality`` or ``channel_names``)."""
    mods = meta.get("modality") or meta.get("channel_names") or {}
    return (str(mods["0"]) or None) if isinstance(mods, dict) and "0" in mods else None


def read_msd(
    path: str | os.PathLike, *, require_labels: bool = True, check_files: bool = False
) -> tuple[list[Case], dict[int, str]]:
    """Cases of an MSD ``dataset.json`` (or of the folder holding it).

    Args:
        require_labels: only the ``"training"`` entries; else also the unlabelled ``"test"``
            entries (``"img.nii.gz"`` or ``{"image": ...}``).
        check_files: raise when an image or label file does not exist (``sam-med evaluate``);
            else unreadable files are left to the caller's checks (``training/``).

    Returns:
        ``(cases, label_names)``: each case's patient is its name; names keyed by label value.

    Raises:
        ValueError: unreadable JSON, an entry without ``image`` (or ``label``), a missing file
            (with ``check_files``) or no cases, naming the file and entry.
    """
    path = Path(path)
    path = path / "dataset.json" if path.is_dir() else path
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the dataset.json ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    modality = msd_modality(meta)
    entries = [("training", i, e, True) for i, e in enumerate(meta.get("training") or [])]
    if not require_labels:
        entries += [("test", i, e, False) for i, e in enumerate(meta.get("test") or [])]
    cases = []
    for group, i, entry, labelled in entries:
        image, label = _msd_entry(path, group, i, entry, labelled)
        for f in (image, label) if check_files else ():
            if f is not None and not f.exists():
                raise ValueError(f"{path}: {group} entry {i}: {f} does not exist")
        name = file_stem(image)
        cases.append(Case(name, name, str(image), None if label is None else str(label), modality))
    if not cases:
        raise ValueError(f"{path}: no cases in 'training'")
    return cases, msd_label_names(meta.get("labels"))


def _msd_entry(
    path: Path, group: str, i: int, entry: Any, labelled: bool
) -> tuple[Path, Path | None]:
    """``(image, label)`` resolved paths of one entry of ``dataset.json``."""
    if isinstance(entry, str) and not labelled:
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry or (labelled and "label" not in entry):
        need = "'image' and 'label'" if labelled else "'image'"
        raise ValueError(f"{path}: {group} entry {i} needs {need}, got {entry}")
    label = entry.get("label")
    return (
        (path.parent / entry["image"]).resolve(),
        None if label is None else (path.parent / label).resolve(),
    )


# ---------------------------------------------------------------- folder of pairs
def find_pairs(
    root: str | os.PathLike, *, require_labels: bool = True, dicom_series: bool = True
) -> list[Case]:
    """Image/label pairs matched by name below ``root`` (layouts in the module docstring).

    Args:
        require_labels: drop images without a label (logged); else keep them with ``label=None``.
        dicom_series: find DICOM series folders (``training/``); ``sam-med evaluate``, which
            reads label volumes only, leaves them out.

    Returns:
        The cases in folder order (the root, then sub-folders sorted by path), each folder's
        cases sorted by name.

    Raises:
        ValueError: ``root`` is not a folder, or no case was found (naming it).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; expected a folder of image/label pairs")
    cases = []
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        for img, label, name in _pairs_in_dir(folder, root, dicom_series):
            if label is None and require_labels:
                logger.warning("%s: no matching label file; not used", img)
                continue
            cases.append(
                Case(
                    name,
                    patient_of(img.relative_to(root), name),
                    str(img),
                    None if label is None else str(label),
                    modality_from_name(name),
                )
            )
    if not cases:
        raise ValueError(f"{root}: found no image/label pairs ({NO_PAIRS_HINT})")
    return cases


def _label_dir(image_dir: Path) -> Path | None:
    """The label folder beside ``image_dir``: its counterpart (``imagesTr`` -> ``labelsTr``)
    if it exists, else the first of :data:`LABEL_DIRS` that does."""
    twin = image_dir.parent / image_dir.name.replace("image", "label")
    dirs = [twin] if twin.name in LABEL_DIRS else []
    dirs += [image_dir.parent / name for name in LABEL_DIRS]
    return next((d for d in dirs if d.is_dir()), None)


def _pairs_in_dir(
    folder: Path, root: Path, dicom_series: bool
) -> list[tuple[Path, Path | None, str]]:
    """``(image, label or None, case name)`` among the files of one folder."""
    if folder.name in LABEL_DIRS:
        return []
    if folder.name in IMAGE_DIRS:
        label_dir = _label_dir(folder)
        rel = folder.parent.relative_to(root)
        if is_dicom_dir(folder):
            if not dicom_series:
                return []
            found = sorted(p for p in label_dir.iterdir() if p.is_file()) if label_dir else []
            return [(folder, found[0] if len(found) == 1 else None, rel.as_posix())]
        labels = volume_files(label_dir) if label_dir is not None else {}
        return [
            (img, labels.get(stem) or labels.get(stem.removesuffix("_0000")),
             (rel / stem.removesuffix("_0000")).as_posix())
            for stem, img in volume_files(folder).items()
        ]  # fmt: skip
    files = volume_files(folder)
    out = []
    for stem, img in sorted(files.items()):
        base = strip_image_suffix(stem)
        if stem.endswith(LABEL_SUFFIXES) or not base:
            continue
        label = next((files[base + s] for s in LABEL_SUFFIXES if base + s in files), None)
        out.append((img, label, (folder.relative_to(root) / base).as_posix()))
    return out


# --------------------------------------------------------------------- CSV table
def read_csv(
    path: str | os.PathLike,
    *,
    require_labels: bool = True,
    check_files: bool = False,
    keep_suffix: bool = False,
    modality_from_names: bool = True,
) -> list[Case]:
    """Cases of a CSV case table (columns in the module docstring), in row order.

    Args:
        require_labels: the ``label`` column and a label in every row are needed; else a row
            with an empty ``label`` is an unlabelled case.
        check_files: raise when an image or label file does not exist (``sam-med evaluate``);
            else unreadable files are left to the caller's checks (``training/``).
        keep_suffix: the default case name keeps the image's suffix (``CT_image.nii.gz``, as
            the 3D benchmark names cases); else it is dropped (``CT_image``).
        modality_from_names: without a ``modality`` cell, read it from the case name; else
            leave it ``None`` (to be filled in by the caller).

    Raises:
        ValueError: an unreadable file, a missing column, an empty cell or (with
            ``check_files``) a missing file, naming the file, row and expectation.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read the CSV case table ({err})") from err
    needed = ("image", "label") if require_labels else ("image",)
    if not rows or not set(needed) <= set(rows[0]):
        raise ValueError(
            f"{path}: expected a CSV header with the column(s) {', '.join(needed)}, got "
            f"{list(rows[0]) if rows else 'no rows'}"
        )
    return [
        _csv_case(path, i, row, needed, check_files, keep_suffix, modality_from_names)
        for i, row in enumerate(rows, start=2)
    ]


def _csv_case(
    path: Path,
    i: int,
    row: dict[str, str | None],
    needed: tuple[str, ...],
    check_files: bool,
    keep_suffix: bool,
    modality_from_names: bool,
) -> Case:
    """The case of row ``i`` (the line number, after the header) of the CSV ``path``."""
    cells = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
    for column in needed:
        if not cells.get(column):
            raise ValueError(f"{path}: row {i} has an empty {column!r}; expected a file path")
    image = (path.parent / cells["image"]).resolve()
    label = (path.parent / cells["label"]).resolve() if cells.get("label") else None
    for f in (image, label) if check_files else ():
        if f is not None and not f.exists():
            raise ValueError(f"{path}: row {i}: {f} does not exist")
    file_name = Path(cells["image"]).name
    name = cells.get("case") or (file_name if keep_suffix else file_stem(file_name))
    modality = cells.get("modality") or (modality_from_name(name) if modality_from_names else None)
    return Case(
        name, cells.get("patient") or name, str(image), None if label is None else str(label),
        modality,
    )  # fmt: skip
