"""Read a checkpoint file safely: ``torch.load(weights_only=True)`` on the CPU, with errors
that say what the file is.

A file that fails to load is told apart without running it: a pickle that builds Python
objects (torch's weights-only unpickler names a blocked ``GLOBAL``, or, for a bare pickle that
it cannot even parse, :mod:`pickletools` lists ``GLOBAL``/``REDUCE``... opcodes: loading it would
run code), versus bytes that are not a checkpoint at all (random data, text, an empty file,
a damaged archive).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError

SCAN_BYTES = 1 << 20  # pickle opcodes looked at to describe a refused file
_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def load_state_dict_file(path: str | os.PathLike) -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True``, with readable errors.

    Raises:
        CheckpointError: missing, not a file, not a checkpoint, corrupt, or a pickle that
            would run code (the message names the file and says which).
    """
    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a file")
    try:
        with warnings.catch_warnings():  # a pickle protocol note, before our own message
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or describe_file(p) == "code":
            raise CheckpointError(
                f"refusing to load {p}: it contains Python objects that would run code when "
                f"unpickled, and only plain tensors/dicts are accepted (weights_only=True). "
                f"Detail: {_detail(exc)}"
            ) from None
        raise _not_a_checkpoint(p, exc) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt zip/pickle raises many kinds
        raise _not_a_checkpoint(p, exc) from None


def _not_a_checkpoint(p: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {p} ({p.stat().st_size} bytes): it is not a PyTorch "
        f"checkpoint, or it is corrupt or truncated ({type(exc).__name__}: {_detail(exc)})"
    )


def _detail(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "nsupported" in ln]  # torch's weights-only unpickler
    text = (useful or lines or [""])[-1]
    return text.split("WeightsUnpickler error: ")[-1][:200]


def describe_file(path: str | os.PathLike) -> str:
    """``"zip"`` (torch's archive format), ``"code"`` (a pickle building Python objects),
    ``"pickle"`` (plain data) or ``"other"`` -- from the first :data:`SCAN_BYTES` bytes,
    without unpickling anything."""
    if zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as fh:
        head = fh.read(SCAN_BYTES)
    seen_code = False
    try:
        for op, _arg, _pos in pickletools.genops(io.BytesIO(head)):
            seen_code = seen_code or op.name in _CODE_OPS
    except Exception:  # noqa: BLE001 - invalid or cut-off opcode stream
        return "code" if seen_code else "other"
    return "code" if seen_code else "pickle"
