"""The one overwrite rule, atomic replacement and file modes of napari_sam_med.outputs."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.errors import OutputExistsError, SamMedError
from napari_sam_med.outputs import (
    atomic_output,
    check_output,
    new_file_mode,
    write_bytes_atomic,
    write_json_atomic,
)
from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.io import write_labels, write_volume
from napari_sam_med.volume.qc import write_bytes_atomic as qc_write_bytes


def test_refuses_existing_output_naming_it(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "r.csv", b"one")
    with pytest.raises(OutputExistsError, match=r"r\.csv: already exists.*--overwrite"):
        write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"one"
    write_bytes_atomic(path, b"two", overwrite=True)
    assert path.read_bytes() == b"two"
    assert isinstance(OutputExistsError("x"), ValueError | FileExistsError)
    assert qc_write_bytes is write_bytes_atomic  # the QC module re-exports the one writer


def test_no_clobber_when_the_file_appears_during_the_write(tmp_path: Path) -> None:
    path = tmp_path / "late.json"
    with pytest.raises(OutputExistsError, match=r"late\.json"):
        with atomic_output(path) as tmp:
            tmp.write_text("ours")
            path.write_text("someone else's")  # created after the check, before the commit
    assert path.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_new_files_get_the_mode_a_normal_write_gives(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        expected = 0o666 & ~umask
        assert new_file_mode() == expected
        vol = Volume(np.zeros((2, 3, 4), np.int16))
        files = [
            write_bytes_atomic(tmp_path / "a.png", b"png"),
            write_json_atomic(tmp_path / "a.sam-med.json", {"a": 1}),
            write_labels(np.zeros((2, 3, 4), np.uint8), vol, tmp_path / "l.nii.gz"),
            write_volume(vol, tmp_path / "v.nrrd"),
        ]
        with open(tmp_path / "plain.txt", "w") as fh:  # what a normal write gives
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == expected, f.name


def test_replacing_keeps_the_old_files_mode(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "shared.json", b"{}")
    os.chmod(path, 0o640)
    write_bytes_atomic(path, b"[]", overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    if sys.platform.startswith("linux") and Path("/proc").is_dir():
        return Path("/proc")  # root may write anywhere except pseudo file systems
    pytest.skip("no folder that root cannot write to on this system")


def test_read_only_folder_is_reported_before_the_writer_runs(tmp_path: Path, capfd) -> None:
    folder = _unwritable_folder(tmp_path)
    vol = Volume(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(SamMedError, match=rf"{folder}/x\.nii\.gz: cannot write into folder"):
        write_labels(np.zeros((2, 3, 4), np.uint8), vol, folder / "x.nii.gz")
    with pytest.raises(SamMedError, match="cannot write into folder"):
        write_json_atomic(folder / "x.json", {})
    err = capfd.readouterr().err
    assert "nifti_image_write_engine" not in err and "ERROR" not in err


def test_check_output_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_output(tmp_path, overwrite=True)
