"""The hostile-input sweep as a table: bad or tricky inputs through the ``sam-med`` CLI and the
Python API. Each row says what must happen: the exit code, the message (naming the file or the
value), and what must NOT happen (an output written or replaced, a stray progress bar, C-library
noise on stderr).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel
import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.errors import PromptError, SamMedError
from napari_sam_med.predictor import SamPredictor
from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.io import read_volume, write_labels, write_volume

SHAPE = (12, 40, 48)  # (z, y, x)
BOX = ["--box3d", "14", "10", "3", "34", "28", "8"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    import torch

    from napari_sam_med.build import build_sam, save_checkpoint

    torch.manual_seed(0)
    model = build_sam("tiny", device="cpu", inference=False)
    return str(save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny.pt"))


def _ct(path: Path, arr: np.ndarray | None = None) -> Path:
    if arr is None:
        z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
        blob = ((x - 24) / 9) ** 2 + ((y - 19) / 8) ** 2 + ((z - 6) / 3) ** 2 < 1
        arr = (np.random.default_rng(0).normal(0, 20, SHAPE) + 150 * blob - 50).astype(np.int16)
    return write_volume(Volume(arr, spacing=(0.8, 0.8, 2.5)), path, overwrite=True)


def _nan_nifti(d: Path) -> Path:
    a = np.random.default_rng(1).normal(0, 50, SHAPE[::-1]).astype(np.float32)  # (x, y, z)
    a[0, 0, 0], a[5, 5, 5], a[6, 6, 6] = np.nan, np.inf, np.nan
    nibabel.save(nibabel.Nifti1Image(a, np.diag([0.8, 0.8, 2.5, 1])), str(d / "nan.nii.gz"))
    return d / "nan.nii.gz"


def _four_d(d: Path) -> Path:
    a = np.stack([np.full(SHAPE[::-1], 100.0 * t, np.float32) for t in range(2)], axis=-1)
    nibabel.save(nibabel.Nifti1Image(a, np.eye(4)), str(d / "four.nii.gz"))
    return d / "four.nii.gz"


def _huge_nrrd(d: Path) -> Path:
    head = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2048 2048 512\nendian: little\n"
    (d / "huge.nrrd").write_bytes(head + b"encoding: raw\n\n" + b"\0" * 4096)
    return d / "huge.nrrd"


def _no_data_mhd(d: Path) -> Path:
    (d / "nodata.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 48 40 12\nElementType = MET_SHORT\n"
        "ElementDataFile = nodata.raw\n"
    )
    return d / "nodata.mhd"


def _random_pth(d: Path) -> Path:
    (d / "random.pth").write_bytes(np.random.default_rng(2).bytes(5000))
    return d / "random.pth"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _evil_pth(d: Path) -> Path:
    (d / "evil.pth").write_bytes(pickle.dumps(_Evil(), protocol=2))
    return d / "evil.pth"


@dataclass
class Row:
    """One hostile input: ``argv(dir, ckpt)``; the expected exit code and stderr pattern."""

    name: str
    argv: Callable[[Path, str], list[str]]
    rc: int
    err: str
    out_absent: bool = True  # the -o output must not exist afterwards
    progress: bool = False  # run with progress bars on (then none may appear)
    setup: Callable[[Path], object] = field(default=lambda d: None)


def _seg(image: str, *extra: str) -> Callable[[Path, str], list[str]]:
    return lambda d, ck: ["segment", str(d / image), *BOX, "-o", str(d / "out.nii.gz"),
                          "--model", ck, "--device", "cpu", "--no-disk-cache", *extra]  # fmt: skip


def _pre(image: str, *extra: str) -> Callable[[Path, str], list[str]]:
    return lambda d, ck: ["precompute", str(d / image), "--model", ck, "--device", "cpu",
                          "--no-disk-cache", "--no-progress", *extra]  # fmt: skip


ROWS = [
    Row("nan_nifti_refused", _seg("nan.nii.gz"), 1,
        r"nan\.nii\.gz: 3 of 23040 voxels are not finite.*--nonfinite-fill", setup=_nan_nifti),
    Row("nan_nifti_explicit_fill", _seg("nan.nii.gz", "--nonfinite-fill", "0"), 0, r"^$",
        out_absent=False, setup=_nan_nifti),
    Row("header_claims_8_gib", _seg("huge.nrrd"), 1,
        r"huge\.nrrd: .*claims 8589934592 bytes .*only 4096 bytes", setup=_huge_nrrd),
    Row("mhd_data_file_missing", _seg("nodata.mhd"), 1,
        r"nodata\.mhd: its header names the data file .*nodata\.raw", setup=_no_data_mhd),
    Row("precompute_inverted_slices", _pre("ct.nii.gz", "--slices", "10", "5"), 2,
        r"--slices 10 5 is an empty range", setup=lambda d: _ct(d / "ct.nii.gz")),
    Row("precompute_slices_outside", _pre("ct.nii.gz", "--slices", "0", "99"), 2,
        r"--slices 0 99 is outside the volume's slices 0\.\.11",
        setup=lambda d: _ct(d / "ct.nii.gz")),
    Row("random_bytes_pth", lambda d, ck: _seg("ct.nii.gz")(d, str(_random_pth(d))), 2,
        r"random\.pth .*not a PyTorch checkpoint", setup=lambda d: _ct(d / "ct.nii.gz")),
    Row("code_pickle_pth", lambda d, ck: _seg("ct.nii.gz")(d, str(_evil_pth(d))), 2,
        r"refusing to load .*evil\.pth: it contains Python objects that would run code",
        setup=lambda d: _ct(d / "ct.nii.gz")),
    Row("4d_needs_component", _seg("four.nii.gz"), 1,
        r"four\.nii\.gz: holds 2 volumes .*--component K", setup=_four_d),
    Row("4d_with_component", _seg("four.nii.gz", "--component", "1"), 0, r"^$",
        out_absent=False, setup=_four_d),
    Row("series_uid_with_manifest",
        lambda d, ck: ["segment", "--manifest", str(d / "m.json"), "--series-uid", "1.2"], 2,
        r"--manifest or IMAGE .*--series-uid"),
    Row("existing_output_kept", _seg("ct.nii.gz"), 1,
        r"out\.nii\.gz: already exists; pass --overwrite",
        out_absent=False,
        setup=lambda d: (_ct(d / "ct.nii.gz"), (d / "out.nii.gz").write_bytes(b"mine"))),
    Row("missing_image_no_stray_bar", _seg("absent.nii.gz"), 1,
        r"absent\.nii\.gz: no such file", progress=True),
    Row("text_file_as_image", _seg("notes.nii.gz"), 1, r"notes\.nii\.gz: not a readable NIfTI",
        setup=lambda d: (d / "notes.nii.gz").write_text("patient notes")),
    Row("auto_existing_output",
        lambda d, ck: ["auto", str(d / "ct.nii.gz"), "-o", str(d / "out.nii.gz"), "--model", ck],
        2, r"out\.nii\.gz: already exists", out_absent=False,
        setup=lambda d: (_ct(d / "ct.nii.gz"), (d / "out.nii.gz").write_bytes(b"mine"))),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_hostile_cli(row: Row, tmp_path: Path, tiny_ckpt: str, capfd) -> None:
    row.setup(tmp_path)
    before = (tmp_path / "out.nii.gz").read_bytes() if (tmp_path / "out.nii.gz").exists() else None
    argv = row.argv(tmp_path, tiny_ckpt)
    if not row.progress and argv[0] in ("segment", "auto"):
        argv.append("--no-progress")
    rc = main(argv)
    out, err = capfd.readouterr()
    assert rc == row.rc, f"{row.name}: exit {rc}\nstdout: {out}\nstderr: {err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if row.rc:
        assert re.search(row.err, err), f"{row.name}: {err}"
        assert len(lines) == 1, f"{row.name}: expected one error line, got {lines}"
    else:
        assert not lines, f"{row.name}: unexpected stderr {lines}"
    assert "slices:" not in err and "0slice" not in err, "stray progress bar"
    assert "** ERROR" not in err
    out_file = tmp_path / "out.nii.gz"
    if row.out_absent:
        assert not out_file.exists(), f"{row.name}: wrote {out_file}"
    elif before is not None:
        assert out_file.read_bytes() == before, f"{row.name}: replaced the user's file"
    else:
        assert read_volume(out_file).array.shape == SHAPE


def test_overwrite_and_resume(tmp_path: Path, tiny_ckpt: str, capsys) -> None:
    _ct(tmp_path / "ct.nii.gz")
    argv = _seg("ct.nii.gz", "--no-progress", "--qc", str(tmp_path / "qc"))(tmp_path, tiny_ckpt)
    assert main(argv) == 0
    out = tmp_path / "out.nii.gz"
    stamp = out.stat().st_mtime_ns
    assert main(argv) == 1 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0 and out.stat().st_mtime_ns == stamp  # finished: kept
    assert main([*argv, "--overwrite"]) == 0 and out.stat().st_mtime_ns != stamp
    qc = sorted(p.name for p in (tmp_path / "qc").iterdir())
    assert qc == ["out_qc.json", "out_qc.png"]  # replaced in place, no temp files left


def test_manifest_bars_close_cleanly(tmp_path: Path, tiny_ckpt: str, capfd) -> None:
    """Two bars (cases over slices) and a failing case in between: the failure is printed
    above the bars, the slice bar is cleared and the case bar ends complete on its own line."""
    _ct(tmp_path / "a.nii.gz")
    box = {"box3d": [14, 10, 0, 34, 28, 11]}
    cases = [{"image": "a.nii.gz", "objects": [box, {"box": [14, 10, 34, 28], "slice": 6}]},
             {"image": "missing.nii.gz", "objects": [box]},
             {"image": "a.nii.gz", "output": "again.nii.gz", "objects": [box]}]  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps({"cases": cases}))
    argv = ["segment", "--manifest", str(tmp_path / "m.json"), "--out-dir", str(tmp_path / "o"),
            "--model", tiny_ckpt, "--device", "cpu", "--no-disk-cache"]  # fmt: skip
    assert main(argv) == 1
    err = capfd.readouterr().err
    assert re.search(r"FAILED missing_seg: .*missing\.nii\.gz: no such file", err)
    last = err.split("\r")[-1]
    assert re.fullmatch(r"cases: 100%.*\| 3/3 \[.*\]\n", last), repr(err[-300:])


def test_series_uid_flag_picks_a_dicom_series(tmp_path: Path, tiny_ckpt: str, capfd) -> None:
    spec = importlib.util.spec_from_file_location(
        "_dicom_helpers", Path(__file__).parent / "volume" / "test_dicom.py"
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.write_series(tmp_path / "mixed", "1.2.3.4.10", "abdomen", 4)
    helpers.write_series(tmp_path / "mixed", "1.2.3.4.20", "thorax", 3, value=100)
    argv = _pre("mixed")(tmp_path, tiny_ckpt)
    assert main(argv) == 2
    assert "holds 2 DICOM series, choose one with --series-uid" in capfd.readouterr().err
    assert main([*argv, "--series-uid", "1.2.3.4.20"]) == 0
    assert "3 slices cached" in capfd.readouterr().out


# ---------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def predictor(tiny_model) -> SamPredictor:
    p = SamPredictor(tiny_model)
    p.set_image(np.random.default_rng(0).uniform(0, 255, (60, 80)).astype(np.float32))
    return p


API_ROWS = [
    ({"point_coords": [[10, 20, 5]], "point_labels": [1]},
     r"point_coords must have shape \(N, 2\).*\(1, 3\)"),
    ({"point_coords": [[10, 20, 5, 6]], "point_labels": [1, 1]}, r"point_coords .*shape \(1, 4\)"),
    ({"point_coords": [[10, 20]], "point_labels": [1, 1]}, r"point_labels has 2 entries for 1"),
    ({"point_coords": [[10, 20]], "point_labels": [2]}, r"point_labels must be 0 .* or 1"),
    ({"point_coords": [[10, 20], [1]], "point_labels": [1, 1]}, r"point_coords must be numbers"),
    ({"point_coords": "here", "point_labels": [1]}, r"point_coords must be numbers"),
    ({"point_coords": [[10, 20]], "point_labels": [[1]]}, r"point_labels must have shape \(N,\)"),
    ({"point_coords": [[10, 20]], "point_labels": ["x"]}, r"point_labels must be numbers"),
    ({"box": [[1, 2, 3]]}, r"box must be \(x0, y0, x1, y1\), shape \(4,\); got shape \(1, 3\)"),
    ({"box": {"a": 1}}, r"box must be numbers"),
    ({"mask_input": np.zeros((2, 2, 2))}, r"mask_input must be"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs,match", API_ROWS)
def test_hostile_prompts(predictor: SamPredictor, kwargs: dict, match: str) -> None:
    with pytest.raises(PromptError, match=match):
        predictor.predict(**kwargs)


def test_write_labels_with_swapped_arguments_names_the_mistake(tmp_path: Path) -> None:
    vol = Volume(np.zeros((2, 3, 4), np.int16))
    with pytest.raises(SamMedError, match=r"needs the reference Volume second; got str"):
        write_labels(np.zeros((2, 3, 4), np.uint8), str(tmp_path / "x.nii.gz"), vol)
