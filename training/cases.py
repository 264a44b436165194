"""Find training cases (image + label files) and check them up front.

Sources (``DataConfig.source``):

* ``"msd"``: a Medical Segmentation Decathlon ``dataset.json`` (``"training": [{"image",
  "label"}]``, ``"labels"`` names, ``"modality"`` or ``"channel_names"``). Paths are relative
  to the JSON's folder.
* ``"folder"``: image/label pairs matched by name, searched recursively. Two layouts:

  1. sibling folders ``images/X.ext`` + ``labels/X.ext`` (also ``imagesTr``/``labelsTr``,
     ``image``/``label``, ``masks``/``mask``). A DICOM series is an ``image/`` folder of
     ``.dcm`` files whose sibling ``mask/`` (or ``label/``) holds one RTSTRUCT ``.dcm`` or a
     label volume: ``STS_001/CT/image/*.dcm`` + ``STS_001/CT/mask/RS.dcm`` is case
     ``STS_001/CT``.
  2. suffixed files ``X_image.ext`` + ``X_mask.ext`` (or ``X.ext`` + ``X_label.ext`` /
     ``X_seg.ext`` / ``X_mask.ext``).

  The patient of a case is the first folder of its path below the root
  (``STS_001/CT_image.nii.gz`` -> ``STS_001``), or the case name when the files sit in the
  root (``images/`` / ``labels/`` folders do not count).
* ``"csv"``: columns ``image,label`` and optionally ``patient``, ``case``, ``modality``;
  relative paths are relative to the CSV file.

``patient_regex`` (group 1 of a match on the case name) overrides the patient everywhere.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_sam_med.volume.io import (
    READ_SUFFIXES,
    Volume,
    check_label_matches,
    file_suffix,
    read_rtstruct,
    read_volume,
)
from napari_sam_med.volume.io import strip_volume_suffix as _strip_suffix

logger = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "imagesTr", "image", "imgs")
LABEL_DIRS = ("labels", "labelsTr", "label", "masks", "mask", "segmentations", "seg")
IMAGE_SUFFIXES = ("_image", "_img", "_0000")
LABEL_SUFFIXES = ("_mask", "_label", "_labels", "_seg", "_gt")
_MODALITY_TOKENS = ("CT", "MR", "MRI", "T1", "T2", "FLAIR", "T1C", "PET")


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


@dataclass
class ScanResult:
    """Outcome of :func:`validate_cases`: usable cases and skipped ones with reasons."""

    cases: list[Case] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def modality_from_name(name: str) -> str | None:
    """``"CT"``/``"MR"``... when a token of ``name`` (split on ``_ - / .``) names a modality."""
    for token in re.split(r"[_\-/.\s]+", name.upper()):
        if token in _MODALITY_TOKENS:
            return "CT" if token == "CT" else ("PET" if token == "PET" else "MR")
    return None


def _is_volume(path: Path) -> bool:
    return path.is_file() and file_suffix(path) in READ_SUFFIXES and file_suffix(path) != ".dcm"


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def _patient_of(rel: Path, case: str) -> str:
    parts = [p for p in rel.parts[:-1] if p not in IMAGE_DIRS + LABEL_DIRS]
    return parts[0] if parts else case


def apply_patient_regex(cases: list[Case], patient_regex: str | None) -> list[Case]:
    if not patient_regex:
        return cases
    pattern = re.compile(patient_regex)
    out = []
    for c in cases:
        m = pattern.search(c.case)
        if m is None:
            raise ValueError(f"patient_regex {patient_regex!r} does not match case {c.case!r}")
        out.append(replace(c, patient=m.group(1) if m.groups() else m.group(0)))
    return out


def cases_from_msd(path: str | Path, require_labels: bool = True) -> tuple[list[Case], dict]:
    """Cases of an MSD ``dataset.json`` (or of the folder holding it).

    Returns:
        ``(cases, label_names)`` with label names keyed by int value (background dropped).
    """
    path = Path(path)
    path = path / "dataset.json" if path.is_dir() else path
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the MSD dataset.json ({err})") from err
    modalities = meta.get("modality") or meta.get("channel_names") or {}
    modality = str(modalities.get("0", "")) or None if isinstance(modalities, dict) else None
    names = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if str(k).isdigit()}
    if not names:  # nnU-Net v2 style: {"background": 0, "tumour": 1}
        names = {
            int(v): str(k) for k, v in (meta.get("labels") or {}).items() if isinstance(v, int)
        }
    entries = list(meta.get("training", []))
    if not require_labels:
        entries += [
            {"image": e, "label": None} if isinstance(e, str) else e for e in meta.get("test", [])
        ]
    cases = []
    for entry in entries:
        image = (path.parent / entry["image"]).resolve()
        label = entry.get("label")
        name = _strip_suffix(image.name)
        cases.append(
            Case(
                name,
                name,
                str(image),
                None if label is None else str((path.parent / label).resolve()),
                modality,
            )
        )
    if not cases:
        raise ValueError(f"{path}: no cases in 'training'")
    return cases, {k: v for k, v in names.items() if k != 0}


def _label_for(stem: str, folder: Path, files: dict[str, Path]) -> Path | None:
    base = stem
    for suf in IMAGE_SUFFIXES:
        if stem.endswith(suf):
            base = stem[: -len(suf)]
            break
    for cand in [base + s for s in LABEL_SUFFIXES]:
        if cand in files:
            return files[cand]
    return None


def _pairs_in_dir(folder: Path, root: Path) -> list[tuple[Path, Path | None, str]]:
    """(image, label, case name) pairs among the files of one folder (layouts 1 and 2)."""
    out = []
    if folder.name in IMAGE_DIRS:
        label_dir = next(
            (folder.parent / d for d in LABEL_DIRS if (folder.parent / d).is_dir()), None
        )
        rel_parent = folder.parent.relative_to(root)
        if _is_dicom_dir(folder):
            label = None
            if label_dir is not None:
                found = sorted(p for p in label_dir.iterdir() if p.is_file())
                label = found[0] if len(found) == 1 else None
            return [(folder, label, rel_parent.as_posix())]
        for img in sorted(p for p in folder.iterdir() if _is_volume(p)):
            stem = _strip_suffix(img.name)
            label = None
            if label_dir is not None:
                label = next(
                    (
                        p
                        for p in label_dir.iterdir()
                        if _is_volume(p)
                        and _strip_suffix(p.name) in (stem, stem.removesuffix("_0000"))
                    ),
                    None,
                )
            out.append((img, label, (rel_parent / stem.removesuffix("_0000")).as_posix()))
        return out
    if folder.name in LABEL_DIRS:
        return out
    files = {_strip_suffix(p.name): p for p in folder.iterdir() if _is_volume(p)}
    for stem, img in sorted(files.items()):
        if any(stem.endswith(s) for s in LABEL_SUFFIXES):
            continue
        label = _label_for(stem, folder, files)
        case = _strip_suffix(img.relative_to(root).as_posix())
        for suf in IMAGE_SUFFIXES:
            case = case.removesuffix(suf)
        out.append((img, label, case))
    return out


def cases_from_folder(path: str | Path, require_labels: bool = True) -> list[Case]:
    """Image/label pairs matched by name below ``path`` (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    folders = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
    cases = []
    for folder in folders:
        for img, label, name in _pairs_in_dir(folder, root):
            if label is None and require_labels:
                logger.warning("%s: no matching label file; not used", img)
                continue
            rel = img.relative_to(root)
            cases.append(
                Case(
                    name,
                    _patient_of(rel, name),
                    str(img),
                    None if label is None else str(label),
                    modality_from_name(name),
                )
            )
    if not cases:
        raise ValueError(f"{root}: found no image/label pairs (see training/cases.py for layouts)")
    return cases


def cases_from_csv(path: str | Path) -> list[Case]:
    """Cases from a CSV with columns ``image,label[,patient][,case][,modality]``."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise ValueError(f"{path}: cannot read the CSV ({err})") from err
    if not rows or "image" not in rows[0]:
        raise ValueError(
            f"{path}: expected a header with an 'image' column, got "
            f"{list(rows[0]) if rows else 'no rows'}"
        )
    cases = []
    for i, row in enumerate(rows):
        image = (path.parent / row["image"].strip()).resolve()
        label = (row.get("label") or "").strip()
        name = (row.get("case") or "").strip() or _strip_suffix(image.name)
        patient = (row.get("patient") or "").strip() or name
        modality = (row.get("modality") or "").strip() or modality_from_name(name)
        cases.append(
            Case(
                name,
                patient,
                str(image),
                str((path.parent / label).resolve()) if label else None,
                modality,
            )
        )
        if not row["image"].strip():
            raise ValueError(f"{path}: row {i + 2} has an empty 'image'")
    return cases


def dataset_from_shared_ibsi(root: str | Path) -> list[Case]:
    """The IBSI soft-tissue sarcoma dev cases: CT and T1 MR per ``STS_xxx`` patient.

    ``STS_001/CT_image.nii.gz`` + ``CT_mask.nii.gz`` becomes case ``STS_001/CT`` of patient
    ``STS_001`` (modality CT); ``MR_T1_*`` becomes ``STS_001/MR_T1`` (modality MR).
    """
    cases = cases_from_folder(root)
    return sorted(cases, key=lambda c: c.case)


def load_case_arrays(
    case: Case, component: int | None = None, rtstruct_rois: Sequence[str] | None = None
) -> tuple[Volume, np.ndarray | None]:
    """Read a case's image and its label array ``(z, y, x)`` on the image grid.

    Raises:
        ValueError: (a ``VolumeError``) naming the file for anything unreadable or mismatched.
    """
    image = read_volume(case.image, component=component)
    if case.label is None:
        return image, None
    label_path = Path(case.label)
    if _is_rtstruct(label_path):
        rois = list(rtstruct_rois) if rtstruct_rois else [None]
        label = np.zeros(image.array.shape, dtype=np.uint8)
        for value, roi in enumerate(rois, start=1):
            label[read_rtstruct(label_path, image, roi) > 0] = value
        return image, label
    label_vol = read_volume(label_path)
    check_label_matches(label_vol, image)
    return image, label_vol.array


def _is_rtstruct(path: Path) -> bool:
    if path.suffix.lower() != ".dcm" or not path.is_file():
        return False
    try:
        import pydicom
    except ImportError:
        return True  # read_rtstruct raises the install hint
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - not DICOM at all: read_volume reports it by name
        return False
    return getattr(ds, "Modality", "") == "RTSTRUCT"


def check_case(
    case: Case, component: int | None = None, rtstruct_rois: Sequence[str] | None = None
) -> str | None:
    """Read a case fully and return why it is unusable (naming the file), or ``None``."""
    try:
        _, label = load_case_arrays(case, component, rtstruct_rois)
    except (ValueError, OSError) as err:
        return f"{case.case}: {err}"
    if label is not None and not np.any(label > 0):
        return f"{case.case}: label {case.label} is empty (no voxel > 0) for image {case.image}"
    return None


def validate_cases(
    cases: Sequence[Case],
    on_bad_case: str = "skip",
    workers: int = 4,
    check: Callable[[Case], str | None] = check_case,
) -> ScanResult:
    """Check every case up front (readable, label on the image grid, label not empty).

    Args:
        cases: the cases to check.
        on_bad_case: ``"skip"`` (log a warning and drop the case) or ``"error"``.
        workers: threads reading files in parallel.
        check: the per-case check (returns a reason or ``None``).

    Raises:
        ValueError: with ``on_bad_case="error"``, naming the first bad case's file and fault.
    """
    if on_bad_case not in ("skip", "stop", "error"):
        raise ValueError(f"on_bad_case={on_bad_case!r}; expected 'skip' or 'stop'")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(check, cases))
    result = ScanResult()
    for case, reason in zip(cases, reasons, strict=True):
        if reason is None:
            result.cases.append(case)
            continue
        if on_bad_case in ("stop", "error"):
            raise ValueError(f"bad training case {reason}")
        logger.warning("skipping case %s", reason)
        result.skipped.append({"case": case.case, "reason": reason})
    return result
