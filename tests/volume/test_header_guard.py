"""Headers claiming more data than the file holds are refused before allocating (naming the
file, the claimed size and the available bytes), under a 200 MB peak-memory guard; NaN/Inf in
NIfTI is found although SimpleITK zeroes it."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam_med.volume.header_guard import check_claimed_size
from napari_sam_med.volume.io import VolumeError, read_volume

GIB8 = 2048 * 2048 * 512 * 4  # what the headers below claim: 8 GiB of float32
PEAK_MB = 200


def nrrd(path: Path, sizes="2048 2048 512", encoding="raw", data=b"\0" * 4096, extra="") -> Path:
    head = (f"NRRD0004\ntype: float\ndimension: 3\nsizes: {sizes}\nendian: little\n"
            f"encoding: {encoding}\n{extra}\n")  # fmt: skip
    path.write_bytes(head.encode() + data)
    return path


def meta(path: Path, datafile="LOCAL", data=b"\0" * 4096, extra="", dims="2048 2048 512"):
    head = (
        f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_FLOAT\n"
        f"{extra}ElementDataFile = {datafile}\n"
    )
    path.write_bytes(head.encode() + data)
    return path


def nifti(path: Path) -> Path:
    """A NIfTI header claiming (2048, 2048, 512) float32 with 4 KB of data behind it."""
    hdr = nibabel.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 512))
    hdr.set_data_dtype(np.float32)
    raw = hdr.binaryblock + b"\0" * 4 + b"\0" * 4096  # 348-byte header, extension flag, data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def hostile_headers(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a regex its error must match)."""
    (d / "short.raw").write_bytes(b"\0" * 4096)
    claim = rf"claims {GIB8} bytes .*\(8\.0 GiB\), but only"
    return {
        "nrrd_raw": (nrrd(d / "a.nrrd"), rf"a\.nrrd: .*{claim} 4096 bytes"),
        "nrrd_gzip": (nrrd(d / "b.nrrd", encoding="gzip", data=gzip.compress(b"\0" * 4096)),
                      rf"b\.nrrd: .*{claim} \d+ compressed bytes"),
        "nhdr_detached": (nrrd(d / "c.nhdr", data=b"", extra="data file: short.raw\n"),
                          rf"c\.nhdr: .*{claim} 4096 bytes .*short\.raw"),
        "nhdr_missing": (nrrd(d / "d.nhdr", data=b"", extra="data file: gone.raw\n"),
                         r"d\.nhdr: its header names the data file .*gone\.raw.*does not exist"),
        "mha_local": (meta(d / "e.mha"), rf"e\.mha: .*{claim} 4096 bytes"),
        "mha_zlib": (meta(d / "f.mha", data=zlib.compress(b"\0" * 4096),
                          extra="CompressedData = True\n"), rf"f\.mha: .*{claim} \d+ compressed"),
        "mhd_detached": (meta(d / "g.mhd", datafile="short.raw", data=b""),
                         rf"g\.mhd: .*{claim} 4096 bytes .*short\.raw"),
        "mhd_missing": (meta(d / "h.mhd", datafile="nothere.raw", data=b""),
                        r"h\.mhd: its header names the data file .*nothere\.raw.*does not exist"),
        "nrrd_ascii": (nrrd(d / "k.nrrd", encoding="ascii", data=b"1 2 3\n"),
                       rf"k\.nrrd: .*{claim} 6 characters of text data"),
        "nhdr_pattern": (nrrd(d / "l.nhdr", data=b"", extra="data file: s%03d.raw 0 511 1\n"),
                         rf"l\.nhdr: .*{claim} \d+ bytes .*data files in the header's folder"),
        "mha_zlib_measured": (
            meta(d / "m.mha", data=zlib.compress(np.random.default_rng(0).bytes(100_000)),
                 extra="CompressedData = True\n", dims="4096 4096 1"),
            r"m\.mha: .*claims 67108864 bytes .*only 100000 bytes after decompressing the zlib"),
        "nii": (nifti(d / "i.nii"), rf"i\.nii: .*{claim} \d+ bytes of data on disk"),
        "nii_gz": (nifti(d / "j.nii.gz"), r"j\.nii\.gz: .*claims \d+ bytes .*but only \d+"),
    }  # fmt: skip


# Peak RSS of the child itself: VmHWM of its own address space. (ru_maxrss is no good here: on
# Linux it keeps the parent's peak across fork + exec, so a child of a big pytest process
# would report the parent's size.)
_CHILD = """
import json, resource, sys
from napari_sam_med.volume.io import read_volume
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"start_mb": peak_mb()}
for name, path in json.loads(sys.argv[1]).items():
    try:
        read_volume(path)
        out[name] = ["read", ""]
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)]
out["peak_mb"] = peak_mb()
print(json.dumps(out))
"""


def test_header_only_files_are_refused_under_200_mb(tmp_path: Path) -> None:
    cases = hostile_headers(tmp_path)
    arg = json.dumps({k: str(p) for k, (p, _) in cases.items()})
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    for name, (_path, pattern) in cases.items():
        kind, message = out[name]
        assert kind == "VolumeError", f"{name}: {kind} {message}"
        assert re.search(pattern, message), f"{name}: {message}"
    assert out["peak_mb"] < PEAK_MB, f"peak RSS {out['peak_mb']:.0f} MB reading header-only files"


def test_honest_files_of_every_layout_still_read(tmp_path: Path) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    image = sitk.GetImageFromArray(arr)
    for name, compress in [("a.nrrd", True), ("b.nrrd", False), ("c.nhdr", True),
                           ("d.nhdr", False), ("e.mha", True), ("f.mha", False),
                           ("g.mhd", True), ("h.mhd", False), ("i.nii", False),
                           ("j.nii.gz", True)]:  # fmt: skip
        sitk.WriteImage(image, str(tmp_path / name), compress)
        np.testing.assert_array_equal(read_volume(tmp_path / name).array, arr, err_msg=name)


def test_compression_cap_is_deflates_bound(tmp_path: Path) -> None:
    """1 MiB of zeros gzips ~1000:1: honest, read; the same stream claiming 1033x is refused."""
    data = gzip.compress(b"\0" * (1 << 20))
    ok = nrrd(tmp_path / "ok.nrrd", sizes=f"{1 << 18} 1 1", encoding="gzip", data=data)
    assert read_volume(ok).array.size == 1 << 18
    claim = (len(data) * 1033) // 4 + 1024
    bad = nrrd(tmp_path / "bad.nrrd", sizes=f"{claim} 1 1", encoding="gzip", data=data)
    with pytest.raises(VolumeError, match=r"cannot expand more than 1032:1"):
        check_claimed_size(bad, "nrrd")


def test_truncated_gzip_nrrd_is_measured_not_trusted(tmp_path: Path) -> None:
    data = gzip.compress(np.ones(1000, np.float32).tobytes())
    path = nrrd(tmp_path / "cut.nrrd", sizes="10 10 10", encoding="gzip", data=data[:-30])
    with pytest.raises(VolumeError, match=r"cut\.nrrd: .*claims 4000 bytes.*only \d+ bytes after"):
        read_volume(path)


# ----------------------------------------------------------------------------- NaN / Inf
def _nan_nifti(path: Path) -> Path:
    a = np.ones((6, 5, 4), np.float32)
    a[0, 0, 0], a[1, 2, 3], a[2, 2, 2] = np.nan, np.inf, -np.inf
    nibabel.save(nibabel.Nifti1Image(a, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_nan_inf_refused_with_count(tmp_path: Path, suffix: str) -> None:
    path = _nan_nifti(tmp_path / f"nan{suffix}")
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # why
    with pytest.raises(VolumeError, match=rf"nan{suffix}: 3 of 120 voxels are not finite"):
        read_volume(path)


def test_nonfinite_fill_is_explicit(tmp_path: Path) -> None:
    vol = read_volume(_nan_nifti(tmp_path / "nan.nii.gz"), nonfinite_fill=-1000)
    assert int((vol.array == -1000).sum()) == 3
    assert vol.array[0, 0, 0] == -1000 and vol.array[3, 2, 1] == -1000  # (x, y, z) -> (z, y, x)
    assert vol.metadata["nonfinite_filled"] == {"count": 3, "value": -1000.0}
    a = np.ones((3, 4, 5), np.float32)
    a[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "nan.nrrd"))
    assert read_volume(tmp_path / "nan.nrrd", nonfinite_fill=0.0).array[1, 1, 1] == 0


def test_4d_nifti_nan_in_the_chosen_component_only(tmp_path: Path) -> None:
    a = np.ones((4, 5, 6, 2), np.float32)
    a[1, 2, 3, 1] = np.nan
    path = tmp_path / "four.nii.gz"
    nibabel.save(nibabel.Nifti1Image(a, np.eye(4)), str(path))
    assert np.isfinite(read_volume(path, component=0).array).all()
    with pytest.raises(VolumeError, match="1 of 120 voxels are not finite"):
        read_volume(path, component=1)
