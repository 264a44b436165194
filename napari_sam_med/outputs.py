"""Writing output files: the ONE overwrite rule, atomic replacement and normal file modes.

Every file napari-sam-med writes for the user (labels, QC PNG/JSON, ``.sam-med.json``
sidecars, summaries, reports, exports, evaluation tables, DICOM objects) goes through
:func:`atomic_output` or the helpers built on it:

* **Overwrite policy**: an existing file is refused with :class:`OutputExistsError` naming it,
  unless ``overwrite=True`` (``--overwrite`` on the command line). Without ``overwrite`` the
  new file is linked into place, which fails if another process created the file meanwhile
  (no check-then-write race). ``--resume`` skips finished cases before anything is written.
* **Atomic**: the data go to a temporary file in the same folder, renamed over the target in
  one step; on any failure nothing is left behind and an old file is untouched.
* **Mode**: the result gets the mode a plain ``open(path, "w")`` would give: ``0o666`` minus
  the umask for a new file, the old file's mode when replacing one (not ``mkstemp``'s 0600).
* **Files the package owns** (embedding cache entries, plugin autosaves) use
  :func:`replace_atomic`: the same atomic write, always replacing, folder created.
* **Clear errors**: a missing or read-only folder is reported as :class:`SamMedError` naming
  the folder before any writer library runs (so no C-library noise reaches stderr).
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import OutputExistsError, SamMedError

OVERWRITE_HINT = "pass --overwrite (command line) or overwrite=True (Python) to replace it"
EXISTS = "{path}: already exists; " + OVERWRITE_HINT


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is False.

    Call it for every output of a job before the work starts, so a refusal costs nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; expected an output file path")
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(EXISTS.format(path=path))
    return path


def new_file_mode(path: str | os.PathLike | None = None) -> int:
    """The permission bits a normal write gives: the existing file's, else 0o666 minus umask."""
    if path is not None:
        try:
            return stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            pass
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and racy)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(
    path: str | os.PathLike, overwrite: bool = False, mkdir: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); the body writes it completely,
    then it becomes ``path`` atomically under the overwrite rule (see the module docstring).

    Args:
        path: the output file.
        overwrite: replace an existing file.
        mkdir: create missing parent folders (else a missing folder is an error).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        SamMedError: the folder is missing or not writable, or the body wrote nothing.
    """
    path = check_output(path, overwrite)
    folder = path.parent
    if mkdir:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SamMedError(f"{path}: cannot create folder {folder} ({exc.strerror})") from None
    if not folder.is_dir():
        raise SamMedError(f"{path}: folder {folder} does not exist")
    tmp = folder / f".tmp-{uuid.uuid4().hex[:12]}{_suffix(path)}"
    try:  # probe: a read-only folder fails here, clearly, before any writer library runs
        tmp.open("xb").close()
    except OSError as exc:
        raise SamMedError(
            f"{path}: cannot write into folder {folder} ({exc.strerror}); choose a writable "
            "folder"
        ) from None
    try:
        yield tmp
        if not tmp.is_file():
            raise SamMedError(f"{path}: the writer produced no file")
        os.chmod(tmp, new_file_mode(path if overwrite else None))
        _commit(tmp, path, overwrite)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path appeared meanwhile: never clobbers
    except FileExistsError:
        raise OutputExistsError(EXISTS.format(path=path)) from None
    except OSError:  # file systems without hard links
        check_output(path, overwrite)
        os.replace(tmp, path)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix


def write_bytes_atomic(
    path: str | os.PathLike, data: bytes, overwrite: bool = False, mkdir: bool = True
) -> Path:
    """Write ``data`` to ``path`` atomically (folder created), under the overwrite rule."""
    path = Path(path)
    with atomic_output(path, overwrite, mkdir) as tmp:
        tmp.write_bytes(data)
    return path


def replace_atomic(
    path: str | os.PathLike, write: Callable[[IO[Any]], object], binary: bool = True
) -> Path:
    """Write ``path`` through ``write(fh)`` (a file opened ``"wb"``, or ``"w"`` UTF-8 text when
    not ``binary``) atomically, replacing an existing file and creating the folder."""
    path = Path(path)
    mode, encoding = ("wb", None) if binary else ("w", "utf-8")
    with atomic_output(path, overwrite=True, mkdir=True) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            write(fh)
    return path


def write_json_atomic(
    path: str | os.PathLike, data: Any, overwrite: bool = False, mkdir: bool = True
) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically, under the overwrite rule.

    numpy scalars/arrays, tuples, sets and paths are converted.
    """
    text = json.dumps(data, indent=1, default=_jsonable) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite, mkdir)


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | tuple | set):
        return list(obj.tolist() if isinstance(obj, np.ndarray) else obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
