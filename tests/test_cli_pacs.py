"""``sam-med segment --format seg|rtstruct`` and ``sam-med pacs`` against a real Orthanc, and
the PACS faults against a tiny fake DICOMweb server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
pytest.importorskip("dicomweb_client", reason="the dicom extra (dicomweb-client) is not installed")
import pydicom  # noqa: E402
from dicom_fakes import ct_phantom, write_ct_series  # noqa: E402

from napari_sam_med.cli import main  # noqa: E402
from napari_sam_med.volume.dicom_seg_read import read_seg  # noqa: E402
from napari_sam_med.volume.io import read_volume  # noqa: E402

SHAPE = (10, 40, 48)
SERIES, STUDY = "1.2.826.0.1.3680043.8.498.11.1", "1.2.826.0.1.3680043.8.498.11.2"
BOX = ["8", "8", "2", "40", "34", "7"]
TOKEN = "tok-SECRET-a81b9"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    """The tiny random model saved once, so every run uses the same weights."""
    import torch

    from napari_sam_med.build import build_sam, save_checkpoint

    torch.manual_seed(0)
    model = build_sam("tiny", device="cpu", inference=False)
    return str(save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny.pt"))


def _args(ckpt: str, *extra: str) -> list[str]:
    return ["--model", ckpt, "--device", "cpu", "--no-disk-cache", "--no-progress", *extra]


@pytest.fixture()
def series(tmp_path: Path) -> Path:
    write_ct_series(tmp_path / "ct", ct_phantom(SHAPE))
    return tmp_path / "ct"


def test_segment_formats_match_nifti(series: Path, tmp_path: Path, tiny_ckpt: str) -> None:
    nii, seg, rt = tmp_path / "r.nii.gz", tmp_path / "r.dcm", tmp_path / "rt.dcm"
    for out, fmt in ((nii, []), (seg, ["--format", "seg"]), (rt, ["--format", "rtstruct"])):
        assert main(["segment", str(series), "--box3d", *BOX, "-o", str(out), *fmt]
                    + _args(tiny_ckpt)) == 0  # fmt: skip
    vol = read_volume(series)
    ref = read_volume(nii).array
    assert ref.any()
    assert int((read_seg(seg, vol).labels != ref).sum()) == 0
    assert pydicom.dcmread(rt).StructureSetROISequence[0].ROIName == "object 1"


def test_segment_dicom_format_refusals(series: Path, tmp_path: Path, tiny_ckpt: str,
                                       capsys) -> None:  # fmt: skip
    out = tmp_path / "r.dcm"
    args = ["segment", str(series), "--box3d", *BOX, "--format", "seg", "-o", str(out)]
    assert main(args + _args(tiny_ckpt)) == 0
    first = out.read_bytes()
    assert main(args + _args(tiny_ckpt)) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert main(args + _args(tiny_ckpt, "--overwrite")) == 0
    nii = tmp_path / "r.nii.gz"
    assert main(["segment", str(series), "--box3d", *BOX, "-o", str(nii)] + _args(tiny_ckpt)) == 0
    capsys.readouterr()
    bad = ["segment", str(nii), "--box3d", *BOX, "--format", "seg", "-o", str(tmp_path / "n.dcm")]
    assert main(bad + _args(tiny_ckpt)) == 1
    assert "write the labels as .nii.gz, .nrrd or .mha instead" in capsys.readouterr().err
    assert not (tmp_path / "n.dcm").exists()
    wrong = ["segment", str(series), "--box3d", *BOX, "--format", "seg", "-o", str(nii)]
    assert main(wrong + _args(tiny_ckpt)) == 2
    assert "a .dcm file for format 'seg'" in capsys.readouterr().err


def test_uneven_series_refused_before_segmenting(tmp_path: Path, tiny_ckpt: str, capsys) -> None:
    zs = [50.0 + 2 * k for k in range(SHAPE[0])]
    zs[5:] = [z + 2.0 for z in zs[5:]]  # a missing slice
    write_ct_series(tmp_path / "gap", ct_phantom(SHAPE), positions_z=zs)
    out = tmp_path / "r.dcm"
    argv = ["segment", str(tmp_path / "gap"), "--box3d", *BOX, "--format", "rtstruct", "-o",
            str(out)]  # fmt: skip
    assert main(argv + _args(tiny_ckpt)) == 1
    err = capsys.readouterr().err
    assert "unevenly spaced" in err and SERIES in err and str(tmp_path / "gap") in err
    assert not out.exists()


def test_manifest_format_per_case(series: Path, tmp_path: Path, tiny_ckpt: str) -> None:
    box = [int(v) for v in BOX]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"cases": [
        {"image": "ct", "name": "a", "format": "seg", "objects": [{"box3d": box, "name": "t"}]},
        {"image": "ct", "name": "b", "format": "rtstruct", "objects": [{"box3d": box}]},
        {"image": "ct", "name": "c", "objects": [{"box3d": box}]},
    ]}))  # fmt: skip
    out = tmp_path / "out"
    assert main(["segment", "--manifest", str(manifest), "--out-dir", str(out)]
                + _args(tiny_ckpt)) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".json")) == [
        "ct_rtstruct.dcm", "ct_seg.dcm", "ct_seg.nii.gz"]  # fmt: skip
    assert read_seg(out / "ct_seg.dcm", read_volume(series)).names == {1: "t"}


def test_manifest_format_errors(tmp_path: Path) -> None:
    from napari_sam_med.volume.manifest import ManifestError, parse_manifest

    def case(**kw):
        return {"cases": [{"image": "ct", "objects": [{"box3d": [0, 0, 0, 1, 1, 1]}], **kw}]}

    with pytest.raises(ManifestError, match=r"cases\[0\]\.format = 'jpeg'; expected one of"):
        parse_manifest(case(format="jpeg", output="a.dcm"), "m.json", tmp_path)
    with pytest.raises(ManifestError, match=r"cases\[0\]\.output = .*gz'; expected a \.dcm"):
        parse_manifest(case(format="rtstruct", output="a.nii.gz"), "m.json", tmp_path)
    spec = parse_manifest(case(format="seg"), "m.json", tmp_path, tmp_path / "out")[0]
    assert spec.output.name == "ct_seg.dcm" and spec.format == "seg"


# ------------------------------------------------------------------------ real Orthanc
def _pacs_env(monkeypatch, orthanc) -> None:
    from orthanc_server import PASSWORD, USER

    monkeypatch.setenv("SAM_MED_PACS_URL", orthanc.dicomweb)
    monkeypatch.setenv("SAM_MED_PACS_USER", USER)
    monkeypatch.setenv("SAM_MED_PACS_PASSWORD", PASSWORD)


def test_orthanc_round_trip(orthanc, series: Path, tmp_path: Path, tiny_ckpt: str,
                            monkeypatch, capsys) -> None:  # fmt: skip
    """Upload a series, segment it from the PACS, store SEG + RTSTRUCT, fetch the SEG that
    Orthanc now holds and compare it voxel for voxel with the NIfTI of the same prompts."""
    import requests
    from orthanc_server import PASSWORD, USER

    _pacs_env(monkeypatch, orthanc)
    assert main(["pacs", "store", *map(str, sorted(series.glob("*.dcm")))]) == 0
    assert main(["pacs", "find", "--patient-id", "SAMMED001"]) == 0
    assert SERIES in capsys.readouterr().out
    cache, out = tmp_path / "cache", tmp_path / "res"
    argv = ["pacs", "segment", "--series", SERIES, "--box3d", *BOX, "--with-rtstruct",
            "--store", "--pacs-cache", str(cache), "--out-dir", str(out)]  # fmt: skip
    assert main(argv + _args(tiny_ckpt)) == 0
    stored = capsys.readouterr().out
    assert stored.count("stored 2.25.") == 2 and PASSWORD not in stored
    nii = tmp_path / "same.nii.gz"
    assert main(["segment", str(series), "--box3d", *BOX, "-o", str(nii)] + _args(tiny_ckpt)) == 0
    auth = (USER, PASSWORD)
    found = requests.get(f"{orthanc.dicomweb}/studies/{STUDY}/series",
                         params={"Modality": "SEG"}, auth=auth, timeout=10).json()  # fmt: skip
    seg_series = [s["0020000E"]["Value"][0] for s in found if s["00080060"]["Value"][0] == "SEG"]
    assert len(seg_series) == 1
    fetched = tmp_path / "fetched"
    assert main(["pacs", "get", "--series", seg_series[0], "--pacs-cache", str(fetched)]) == 0
    seg_file = next((fetched / seg_series[0]).glob("*.dcm"))
    back = read_seg(seg_file, read_volume(series)).labels
    assert int((back != read_volume(nii).array).sum()) == 0
    # storing the same SEG again makes no duplicate
    before = requests.get(f"{orthanc.root}/instances", auth=auth, timeout=10).json()
    assert main(["pacs", "store", str(next(out.glob("*_seg.dcm")))]) == 0
    after = requests.get(f"{orthanc.root}/instances", auth=auth, timeout=10).json()
    assert len(after) == len(before)


def test_orthanc_manifest_case_names_a_pacs_series(orthanc, series: Path, tmp_path: Path,
                                                   tiny_ckpt: str, monkeypatch) -> None:
    _pacs_env(monkeypatch, orthanc)
    assert main(["pacs", "store", *map(str, sorted(series.glob("*.dcm")))]) == 0
    manifest = tmp_path / "m.json"
    box = [int(v) for v in BOX]
    manifest.write_text(json.dumps({"cases": [
        {"pacs": {"series_uid": SERIES}, "name": "remote", "objects": [{"box3d": box}]}]}))
    out = tmp_path / "res"
    argv = ["pacs", "segment", "--manifest", str(manifest), "--out-dir", str(out),
            "--pacs-cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv + _args(tiny_ckpt)) == 0
    assert len(list(out.glob("*_seg.dcm"))) == 1


def test_orthanc_wrong_password(orthanc, tmp_path: Path, monkeypatch, capsys) -> None:
    _pacs_env(monkeypatch, orthanc)
    monkeypatch.setenv("SAM_MED_PACS_PASSWORD", "not-the-password-xyz")
    assert main(["pacs", "get", "--series", SERIES, "--pacs-cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "access denied (HTTP 401)" in err and orthanc.dicomweb in err and SERIES in err
    assert "not-the-password-xyz" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------ fake server
class _Fake(BaseHTTPRequestHandler):
    mode = "ok"
    hits: list[str] = []
    instance = b""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).hits.append(self.path)
        if self.mode in ("401", "403", "503"):
            self.send_response(int(self.mode))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.mode == "slow":
            time.sleep(1.5)
        if "/series?" in self.path or self.path.endswith("/series"):
            body = b"[]" if self.mode == "404" else json.dumps([{
                "0020000D": {"vr": "UI", "Value": [STUDY]},
                "0020000E": {"vr": "UI", "Value": [SERIES]},
                "00201209": {"vr": "IS", "Value": [3]}}]).encode()  # fmt: skip
            self._send(body, "application/dicom+json")
            return
        part = b"--XB\r\nContent-Type: application/dicom\r\n\r\n" + self.instance + b"\r\n--XB--"
        if self.mode == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; '
                             "boundary=XB")  # fmt: skip
            self.send_header("Content-Length", str(len(part) * 3))
            self.end_headers()
            self.wfile.write(part[: len(part) // 2])
            return
        self._send(part, 'multipart/related; type="application/dicom"; boundary=XB')

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def fake(series: Path):
    _Fake.hits = []
    _Fake.instance = next(series.glob("*.dcm")).read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "mode, message",
    [("401", "access denied (HTTP 401)"), ("403", "access denied (HTTP 403)"),
     ("404", f"series {SERIES} not found"), ("503", "HTTP 503"), ("slow", "timed out"),
     ("truncated", "partial download"), ("ok", "partial download, 1 of 3 instances")],
)  # fmt: skip
def test_pacs_faults(fake, mode: str, message: str, tmp_path: Path, monkeypatch,
                     capsys, caplog) -> None:  # fmt: skip
    _Fake.mode = mode
    url = f"http://127.0.0.1:{fake.server_address[1]}/dicom-web"
    config = tmp_path / "pacs.json"
    config.write_text(json.dumps({"url": url, "token_env": "MY_TOKEN", "timeout": 0.5,
                                  "retries": 2, "backoff": 0.01}))  # fmt: skip
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    cache = tmp_path / "cache"
    caplog.set_level(logging.DEBUG)
    code = main(["pacs", "get", "--series", SERIES, "--pacs-config", str(config),
                 "--pacs-cache", str(cache), "-vv"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    line = captured.err.strip().splitlines()[-1]
    assert message in line and url in line and SERIES in line, line
    assert TOKEN not in captured.err + captured.out + caplog.text
    assert not cache.exists() or not any(cache.rglob("*.dcm"))  # no partial series left
    if mode == "503":
        assert len(_Fake.hits) == 3  # 1 try + 2 retries, then stop


def test_pacs_unreachable(tmp_path: Path, capsys) -> None:
    from orthanc_server import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    config = tmp_path / "pacs.json"
    config.write_text(json.dumps({"url": url, "password": "pw-SECRET", "username": "u",
                                  "retries": 1, "backoff": 0.01}))  # fmt: skip
    t0 = time.monotonic()
    assert main(["pacs", "get", "--series", SERIES, "--pacs-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and url in err and SERIES in err and "pw-SECRET" not in err
    assert time.monotonic() - t0 < 10


def test_config_repr_hides_secrets() -> None:
    from napari_sam_med.volume.pacs import load_pacs_config

    cfg = load_pacs_config(env={"SAM_MED_PACS_URL": "https://u:pw@pacs.example/dw",
                                "SAM_MED_PACS_TOKEN": TOKEN})  # fmt: skip
    assert TOKEN not in repr(cfg) and "pw" not in cfg.server and cfg.verify is True
    assert np.all([cfg.server == "https://pacs.example/dw"])
