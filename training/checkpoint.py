"""Atomic training checkpoints: a model file in our format plus a separate resume state.

Every save writes ``checkpoints/step_XXXXXXX.pth`` (``napari_sam_med.build.save_checkpoint``:
config + weights + preprocessing; it loads directly with ``build_sam(path)``, the CLI and the
plugin) and ``checkpoints/resume_XXXXXXX.pt`` (model, optimizer, scheduler, GradScaler, RNG
states, step, best score). Only the last ``keep_last`` pairs are kept; ``best.pth`` is the
model with the highest validation Dice. All files are written to a temp file and renamed.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sam_med.build import atomic_torch_save, save_checkpoint

logger = logging.getLogger(__name__)

_RESUME_RE = re.compile(r"resume_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states as ``weights_only``-safe objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_torch_save(obj, path)


def save_training_state(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    extra: dict[str, Any],
    metadata: dict[str, Any],
    keep_last: int,
) -> tuple[Path, Path]:
    """Write the model checkpoint and the resume state for ``step``; prune old pairs."""
    folder = Path(run_dir) / "checkpoints"
    model_path = save_checkpoint(model, folder / f"step_{step:07d}.pth", metadata=metadata)
    state = {
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_state(),
        "extra": extra,
    }
    resume_path = folder / f"resume_{step:07d}.pt"
    _atomic_torch_save(state, resume_path)
    for old in list_resume_states(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
        (folder / f"step_{_step_of(old):07d}.pth").unlink(missing_ok=True)
    return model_path, resume_path


def save_best(run_dir: str | os.PathLike, model: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``checkpoints/best.pth`` (our checkpoint format)."""
    return save_checkpoint(model, Path(run_dir) / "checkpoints" / "best.pth", metadata=metadata)


def _step_of(path: Path) -> int:
    m = _RESUME_RE.search(path.name)
    return int(m.group(1)) if m else -1


def list_resume_states(run_dir: str | os.PathLike) -> list[Path]:
    """Resume files of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _RESUME_RE.search(p.name)), key=_step_of)


def find_resume(resume: str | None, run_dir: str | os.PathLike) -> Path | None:
    """``resume: auto`` -> the latest resume file of ``run_dir`` (or None); a path -> itself.

    Raises:
        ValueError: a given path that does not exist.
    """
    if not resume:
        return None
    if resume == "auto":
        states = list_resume_states(run_dir)
        return states[-1] if states else None
    path = Path(resume)
    if path.is_dir():
        states = list_resume_states(path.parent if path.name == "checkpoints" else path)
        if not states:
            raise ValueError(f"run.resume={resume}: no resume_*.pt in {path}")
        return states[-1]
    if not path.is_file():
        raise ValueError(f"run.resume={resume}: no such resume file")
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a resume file with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt/foreign files raise many kinds
        raise ValueError(f"{path}: cannot read the resume state ({err})") from err
