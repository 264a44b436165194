"""The cases of a 3D benchmark: a CSV table, an MSD ``dataset.json`` or a folder of pairs,
optionally restricted to one group of a fixed patient split.

CSV tables (e.g. ``training/splits/dev_pool.csv``) have the columns ``image`` and ``label``
(paths relative to the CSV) and optionally ``case`` (the id a split lists; default: the
image's file name) and ``modality``; other columns (``patient``) are ignored. Split files
are JSON with one list of case ids per group (``"train"``, ``"val"``), as
``training/splits/dev_v1.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ..export import EvalCase, discover_cases
from ..preprocessing import guess_preset
from ..volume.datasets import modality_from_name, read_csv
from . import GROUPS


def read_case_table(path: str | os.PathLike) -> list[EvalCase]:
    """Cases of a CSV table (see the module docstring), read by
    :func:`napari_sam_med.volume.datasets.read_csv`.

    Raises:
        ValueError: unreadable file, missing columns or files (naming the file and row).
    """
    found = read_csv(path, check_files=True, keep_suffix=True, modality_from_names=False)
    return [EvalCase(c.case, c.image, str(c.label), c.modality) for c in found]


def load_cases(data: str | os.PathLike, default_modality: str | None = None) -> list[EvalCase]:
    """Cases of a CSV table, an MSD ``dataset.json`` (or its folder) or a folder of pairs."""
    p = Path(data)
    if p.suffix.lower() == ".csv":
        cases = read_case_table(p)
    else:
        cases, _ = discover_cases(p)
    if default_modality:
        cases = [replace(c, modality=c.modality or default_modality) for c in cases]
    return cases


def select_group(
    cases: list[EvalCase], split: str | os.PathLike, group: str = "val"
) -> list[EvalCase]:
    """The cases listed in ``split``'s ``group``, in the split's order.

    Raises:
        ValueError: an unreadable split, an unknown group, or ids without a case (named).
    """
    if group not in GROUPS:
        raise ValueError(f"group {group!r}; expected one of {', '.join(GROUPS)}")
    try:
        meta = json.loads(Path(split).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{split}: cannot read the split file ({err})") from err
    ids = meta.get(group) if isinstance(meta, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{split}: expected a list of case ids under {group!r}")
    by_name = {c.name: c for c in cases}
    missing = [i for i in ids if i not in by_name]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{split}: {len(missing)} case ids of group {group!r} are not in the data "
            f"({shown}); the data has e.g. {', '.join(list(by_name)[:3])}"
        )
    return [by_name[i] for i in ids]


def modality_of(case: EvalCase, image_array) -> str:
    """``"CT"`` or ``"MR"``, as :func:`~napari_sam_med.preprocessing.guess_preset` reads the
    case's modality; without one, the modality its name gives
    (:func:`~napari_sam_med.volume.datasets.modality_from_name`: ``STS_001/CT``, ``x_MR``,
    ``x_T1``); else the voxel values."""
    preset = guess_preset(case.modality or modality_from_name(case.name), image_array)
    return "CT" if preset.startswith("ct") else "MR"
