"""The files of one batch case: its label output, the completion marker beside it, its QC
report, and the overwrite rule applied to all of them before any work starts."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

from ..outputs import check_output
from .io import file_stem
from .manifest import CaseSpec
from .qc import qc_paths

MARKER_SUFFIX = ".sam-med.json"


def marker_path(output: str | os.PathLike) -> Path:
    """The completion marker beside ``output``: ``ct1_seg.nii.gz`` -> ``ct1_seg.sam-med.json``;
    other suffixes stay in the name (``ct1_seg.dcm`` -> ``ct1_seg.dcm.sam-med.json``), so the
    outputs ``ct1_seg.nii.gz`` and ``ct1_seg.dcm`` of two cases get two markers."""
    out = Path(output)
    stem = file_stem(out) if out.name.lower().endswith(".nii.gz") else out.name
    return out.with_name(stem + MARKER_SUFFIX)


def claim_case_outputs(
    case: CaseSpec, qc_dir: str | os.PathLike | None, overwrite: bool, resume: bool
) -> bool:
    """Apply the overwrite rule (:func:`napari_sam_med.outputs.check_output`) to the case's
    labels, marker and QC files; returns whether the writes may replace existing files.

    Under ``resume`` an unfinished case whose marker is beside its output was written by an
    earlier run of ours (with other prompts, model or inputs), so it is redone in place; an
    output without a marker is the user's and needs ``overwrite``.

    Raises:
        OutputExistsError: an output exists and may not be replaced (names the file).
    """
    marker = marker_path(case.output)
    replace = overwrite or (resume and marker.is_file())
    paths = [case.output, marker]
    if qc_dir is not None:
        paths += list(qc_paths(qc_dir, case.name))
    for path in paths:
        check_output(path, replace)
    return replace


def sha256_path(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, or of every file under a folder (relative names and contents)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for block in iter(partial(fh.read, chunk), b""):
                h.update(block)
    return h.hexdigest()
