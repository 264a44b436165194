"""Training cases: the data sources of ``DataConfig.source`` and the up-front case checks.

Sources:

* ``"msd"``: a Medical Segmentation Decathlon ``dataset.json``, read by
  :func:`napari_sam_med.volume.datasets.read_msd` (files are checked later, by
  :func:`validate_cases`, so a missing file is skipped or stops the run per ``on_bad_case``).
* ``"folder"``: image/label pairs matched by name, searched recursively, found by
  :func:`napari_sam_med.volume.datasets.find_pairs` (sibling ``images/`` + ``labels/``
  folders, DICOM series folders with an RTSTRUCT, suffixed ``X_image`` + ``X_mask`` files;
  patient and modality from the path). The layouts are described in that module.
* ``"csv"``: columns ``image,label`` and optionally ``patient``, ``case``, ``modality``;
  relative paths are relative to the CSV file; read by
  :func:`napari_sam_med.volume.datasets.read_csv` (a row without a label is unlabelled).

``patient_regex`` (group 1 of a match on the case name) overrides the patient everywhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_sam_med.volume.datasets import Case, find_pairs, read_csv
from napari_sam_med.volume.io import (
    Volume,
    check_label_matches,
    read_rtstruct,
    read_volume,
)

logger = logging.getLogger(__name__)


@dataclass
class ScanResult:
    """Outcome of :func:`validate_cases`: usable cases and skipped ones with reasons."""

    cases: list[Case] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


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


def cases_from_csv(path: str | Path) -> list[Case]:
    """Cases from a CSV with columns ``image[,label][,patient][,case][,modality]``, read by
    :func:`napari_sam_med.volume.datasets.read_csv` (files are checked later, by
    :func:`validate_cases`)."""
    return read_csv(path, require_labels=False)


def dataset_from_shared_ibsi(root: str | Path) -> list[Case]:
    """The IBSI soft-tissue sarcoma dev cases: CT and T1 MR per ``STS_xxx`` patient.

    ``STS_001/CT_image.nii.gz`` + ``CT_mask.nii.gz`` becomes case ``STS_001/CT`` of patient
    ``STS_001`` (modality CT); ``MR_T1_*`` becomes ``STS_001/MR_T1`` (modality MR).
    """
    cases = find_pairs(root)
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
