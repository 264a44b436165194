"""Train/validation splits by patient, reproducible from a seed and saved in the run folder."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_med.volume.datasets import Case

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


def split_by_patient(cases: Sequence[Case], val_fraction: float, seed: int) -> dict[str, Any]:
    """Assign whole patients to train or val.

    The sorted patient ids are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(val_fraction * n_patients)`` (at least 1 when ``val_fraction > 0`` and there are
    two or more patients) go to validation. The result depends only on the set of patient ids,
    the fraction and the seed, not on the order of ``cases``.

    Args:
        cases: all discovered cases (before any is skipped, so skipping never moves patients).
        val_fraction: fraction of patients held out, in ``[0, 1)``.
        seed: the split seed.

    Returns:
        ``{"seed", "val_fraction", "train": [case], "val": [case], "train_patients",
        "val_patients"}`` with sorted lists.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}; expected a value in [0, 1)")
    patients = sorted({c.patient for c in cases})
    n_val = int(round(val_fraction * len(patients)))
    if val_fraction > 0 and len(patients) > 1:
        n_val = min(max(n_val, 1), len(patients) - 1)
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = sorted(patients[i] for i in order[:n_val])
    val_set = set(val_patients)
    return {
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "train": sorted(c.case for c in cases if c.patient not in val_set),
        "val": sorted(c.case for c in cases if c.patient in val_set),
        "train_patients": sorted(set(patients) - val_set),
        "val_patients": val_patients,
    }


def write_split(run_dir: str | os.PathLike, split: dict[str, Any]) -> Path:
    """Write ``split`` as ``run_dir/split.json`` (atomically) and return the path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / SPLIT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(split, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    logger.info("wrote the train/val split to %s", path)
    return path


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """Read a split written by :func:`write_split` (a file, or the run folder holding it).

    Raises:
        ValueError: unreadable file or missing ``train``/``val`` lists.
    """
    path = Path(path)
    path = path / SPLIT_FILE if path.is_dir() else path
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the split file ({err})") from err
    if not isinstance(split.get("train"), list) or not isinstance(split.get("val"), list):
        raise ValueError(f"{path}: a split needs 'train' and 'val' lists of case names")
    return split


def apply_split(cases: Sequence[Case], split: dict[str, Any]) -> tuple[list[Case], list[Case]]:
    """``(train_cases, val_cases)`` of ``cases`` named by ``split``; others are dropped (logged).

    Raises:
        ValueError: a patient has cases on both sides (leakage).
    """
    train_names, val_names = set(split["train"]), set(split["val"])
    train = [c for c in cases if c.case in train_names]
    val = [c for c in cases if c.case in val_names]
    unknown = [c.case for c in cases if c.case not in train_names | val_names]
    if unknown:
        logger.warning(
            "%d cases are not in the split and are not used: %s", len(unknown), unknown[:10]
        )
    leaked = sorted({c.patient for c in train} & {c.patient for c in val})
    if leaked:
        raise ValueError(f"split puts patients {leaked} in both train and val")
    return train, val
