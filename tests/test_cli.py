"""The ``sam-med`` CLI and the batch library under it (tiny random model; one LiteMedSAM run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.volume.auto import _link_regions, segment_automatic
from napari_sam_med.volume.geometry import Volume, index_to_world
from napari_sam_med.volume.io import read_volume, write_volume
from napari_sam_med.volume.segment import marker_path

REPO = Path(__file__).resolve().parents[1]
SHAPE = (12, 48, 64)  # (z, y, x)
BOX3D = [18, 12, 3, 42, 32, 9]  # around the phantom's ellipsoid, inclusive voxel indices


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    """The tiny random model, saved once so every process loads the same weights."""
    import torch

    from napari_sam_med.build import build_sam, save_checkpoint

    torch.manual_seed(0)
    model = build_sam("tiny", device="cpu", inference=False)
    return str(save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny.pt"))


def _phantom(path: Path, seed: int = 0) -> Path:
    """A CT-like volume: a bright ellipsoid in noise, anisotropic spacing, shifted origin."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    blob = ((x - 30) / 10) ** 2 + ((y - 22) / 8) ** 2 + ((z - 6) / 3.5) ** 2 < 1
    arr = np.random.default_rng(seed).normal(0, 20, SHAPE) + 150 * blob - 50
    vol = Volume(arr.astype(np.int16), spacing=(0.8, 0.8, 2.5), origin=(-20.0, 5.0, 33.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(vol, path)


def _args(ckpt: str, *extra: str) -> list[str]:
    return ["--model", ckpt, "--device", "cpu", "--no-disk-cache", "--no-progress", *extra]


def test_segment_one_image_box3d_with_qc(tmp_path: Path, tiny_ckpt: str, capsys) -> None:
    img = _phantom(tmp_path / "ct.nii.gz")
    out = tmp_path / "res" / "ct_seg.nii.gz"
    box = ["18", "12", "3", "42", "32", "9"]
    rc = main(["segment", str(img), "--box3d", *box, "-o", str(out), "--qc", str(tmp_path / "qc")]
              + _args(tiny_ckpt, "--modality", "CT"))  # fmt: skip
    assert rc == 0
    lab, src = read_volume(out), read_volume(img)
    assert lab.array.shape == SHAPE
    for attr in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(lab, attr), getattr(src, attr), atol=1e-5)
    assert set(np.unique(lab.array)) <= {0, 1}
    inside = np.zeros(SHAPE, bool)
    inside[3:10, 12:33, 18:43] = True  # the box, inclusive
    assert not lab.array[~inside].any()  # nothing outside the 3D box
    assert (tmp_path / "qc" / "ct_seg_qc.png").is_file()
    trace = json.loads((tmp_path / "qc" / "ct_seg_qc.json").read_text())
    assert trace["preset"] == "ct_soft_tissue" and trace["objects"][0]["label"] == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["case", "objects", "voxels", "volume", "mL", "seconds", "status"]
    row = table[2].split()
    assert row[0] == "ct_seg" and row[1] == "1" and int(row[2]) == int(lab.array.sum())
    assert row[-1] in ("ok", "empty")
    marker = json.loads(marker_path(out).read_text())
    assert marker["result"]["voxels"] == int(lab.array.sum())


def test_world_prompts_match_voxel_prompts(tmp_path: Path, tiny_ckpt: str) -> None:
    img = _phantom(tmp_path / "ct.nii.gz")
    vol = read_volume(img)

    def mm(*ijk):  # voxel index (x, y, z) -> LPS mm, as strings
        return [f"{v:.4f}" for v in index_to_world(vol, list(ijk))]

    b0, b1, p = mm(18, 12, 3), mm(42, 32, 9), mm(30, 22, 6)
    c0, c1 = mm(20, 14, 6), mm(40, 30, 6)
    voxel = [
        "--box3d",
        "18",
        "12",
        "3",
        "42",
        "32",
        "9",
        "--box",
        "20",
        "14",
        "40",
        "30",
        "--slice",
        "6",
        "--points",
        "30",
        "22",
        "6",
    ]
    world = ["--box3d", *b0, *b1, "--box", c0[0], c0[1], c1[0], c1[1], "--slice", c0[2],
             "--points", *p, "--space", "world"]  # fmt: skip
    for name, prompts in (("v", voxel), ("w", world)):
        argv = ["segment", str(img), "-o", str(tmp_path / f"{name}.nii.gz"), *prompts]
        assert main(argv + _args(tiny_ckpt, "--preset", "ct_soft_tissue")) == 0
    a, b = read_volume(tmp_path / "v.nii.gz").array, read_volume(tmp_path / "w.nii.gz").array
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1, 2}


def _manifest(tmp_path: Path, cases: list[dict]) -> Path:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"cases": cases}))
    return path


def test_manifest_batch_failure_and_resume(tmp_path: Path, tiny_ckpt: str, capsys) -> None:
    _phantom(tmp_path / "imgs" / "a.nii.gz", seed=1)
    _phantom(tmp_path / "imgs" / "c.nii.gz", seed=2)
    cases = [
        {"image": "imgs/a.nii.gz", "modality": "CT", "objects": [{"box3d": BOX3D}]},
        {"image": "imgs/missing.nii.gz", "objects": [{"box3d": [0, 0, 0, 1, 1, 1]}]},
        {"image": "imgs/c.nii.gz", "objects": [
            {"label": 1, "box": [20, 14, 40, 30], "slice": 6},
            {"label": 3, "points": [[50, 40, 2], [52, 40, 2]], "point_labels": [1, 0]}]},
    ]  # fmt: skip
    man = _manifest(tmp_path, cases)
    out, qc, summary = tmp_path / "out", tmp_path / "qc", tmp_path / "summary.json"
    run = ["segment", "--manifest", str(man), "--out-dir", str(out), "--qc", str(qc),
           "--summary", str(summary)] + _args(tiny_ckpt, "--modality", "MR")  # fmt: skip
    assert main(run) == 1  # one case failed, the others went on
    text = capsys.readouterr()
    assert "FAILED missing_seg: " in text.out and "missing.nii.gz: no such file" in text.out
    res = json.loads(summary.read_text())
    assert [r["status"] for r in res][1] == "failed"
    assert res[0]["status"] in ("ok", "empty") and res[2]["status"] in ("ok", "empty")
    assert [o["label"] for o in res[2]["objects"]] == [1, 3]
    assert res[0]["preset"] == "ct_soft_tissue" and res[2]["preset"] == "mr"  # case, then CLI
    a_out, c_out = out / "a_seg.nii.gz", out / "c_seg.nii.gz"
    stamp = (a_out.stat().st_mtime_ns, c_out.stat().st_mtime_ns)

    assert main(run + ["--resume"]) == 1  # the missing image still fails
    res = json.loads(summary.read_text())
    assert [r["status"] for r in res] == ["skipped", "failed", "skipped"]
    assert (a_out.stat().st_mtime_ns, c_out.stat().st_mtime_ns) == stamp

    cases[2]["objects"][0]["box"] = [21, 14, 40, 30]  # a changed prompt -> not complete
    _manifest(tmp_path, cases)
    a_out.write_bytes(a_out.read_bytes()[:-10])  # a damaged output -> not complete
    (qc / "c_seg_qc.png").unlink()
    assert main(run + ["--resume"]) == 1
    res = json.loads(summary.read_text())
    assert res[0]["status"] != "skipped" and res[2]["status"] != "skipped"
    assert read_volume(a_out).array.shape == SHAPE


def test_cli_errors_are_one_line(tmp_path: Path, tiny_ckpt: str, capsys) -> None:
    img = _phantom(tmp_path / "ct.nii.gz")
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    box = ["--box3d", "1", "1", "1", "5", "5", "5", "-o", str(tmp_path / "o.nii.gz")]
    cases = [
        (["segment", str(img), *box, "--model", str(bad_ckpt)], 2, "bad.pt"),
        (["segment", str(tmp_path / "nope.nii.gz"), *box, *_args(tiny_ckpt)], 1, "no such file"),
        (["segment", str(img), "-o", "x.nii.gz", *_args(tiny_ckpt)], 2, "needs a prompt"),
        (["segment", str(img), "--box3d", *map(str, BOX3D), *_args(tiny_ckpt)], 2, "needs -o"),
        (["segment", str(img), "--box3d", "1", "1", "1", "99", "5", "5", "-o", "x.nii.gz",
          *_args(tiny_ckpt)], 1, r"command line: cases[0].objects[0].box3d: value"),
        (["segment", "--manifest", str(_manifest(tmp_path, [{"image": 1}])), *_args(tiny_ckpt)],
         2, "cases.json: cases[0].image = 1; expected a file path"),
        (["segment", str(img), *box, "--device", "cuda:7"], 2, "device='cuda:7'"),
    ]  # fmt: skip
    for argv, code, needle in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sam-med: error: ") and needle in err[0], err


def test_module_entry_point_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "napari_sam_med.cli", "segment", str(tmp_path / "x.nii.gz"),
         "--box3d", "0", "0", "0", "1", "1", "1", "-o", str(tmp_path / "o.nii.gz"),
         "--model", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sam-med: error: ") and "bad.pt" in proc.stderr


def test_precompute_fills_cache_that_segment_reuses(tmp_path, tiny_ckpt, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_SAM_MED_CACHE", str(tmp_path / "cache"))
    img = _phantom(tmp_path / "ct.nii.gz")
    opts = ["--model", tiny_ckpt, "--device", "cpu", "--no-progress", "--modality", "CT"]
    assert main(["precompute", str(img), *opts]) == 0
    assert "12 slices cached (12 computed" in capsys.readouterr().out
    files = sorted((tmp_path / "cache" / "embeddings").rglob("*.npz"))
    assert len(files) == SHAPE[0] and len({f.parent for f in files}) == 1
    out = tmp_path / "o.nii.gz"
    assert main(["segment", str(img), "--box3d", "18", "12", "3", "42", "32", "9", "-o", str(out),
                 *opts]) == 0  # fmt: skip
    assert sorted((tmp_path / "cache" / "embeddings").rglob("*.npz")) == files  # all reused
    assert main(["precompute", str(img), *opts]) == 0
    assert "12 slices cached (0 computed" in capsys.readouterr().out


def test_link_regions_hand_made() -> None:
    prev = np.zeros((6, 10), np.int32)
    prev[1:4, 1:4] = 1  # object 1, 9 px
    prev[1:4, 6:9] = 2  # object 2, 9 px
    cur = np.zeros((6, 10), np.int32)
    cur[1:4, 6:9] = 1  # same place as object 2 (IoU 1)
    cur[4:6, 1:3] = 2  # touches nothing of object 1 -> new object
    ids, nxt = _link_regions(prev, cur, next_id=3, link_iou=0.3)
    assert ids.tolist() == [0, 2, 3] and nxt == 4
    ids, nxt = _link_regions(None, cur, next_id=1, link_iou=0.3)
    assert ids.tolist() == [0, 1, 2] and nxt == 3


def test_segment_automatic_links_slices(monkeypatch) -> None:
    """With a fake 2D generator (connected bright blobs), two tubes become two 3D objects."""
    import scipy.ndimage as ndi

    import napari_sam_med.amg as amg

    class FakeGenerator:
        def __init__(self, model, **settings):
            self.settings = settings

        def generate(self, image):
            regions, n = ndi.label(image > 128)
            return [{"segmentation": regions == k, "area": int((regions == k).sum())}
                    for k in range(1, n + 1)]  # fmt: skip

    monkeypatch.setattr(amg, "AutomaticMaskGenerator", FakeGenerator)
    arr = np.zeros((6, 20, 30), np.int16)
    arr[0:5, 2:8, 2:8] = 300  # tube 1: slices 0-4
    arr[1:6, 10:16, 15:22] = 300  # tube 2: slices 1-5
    arr[3, 17:19, 2:4] = 300  # a 4-voxel speck
    labels = segment_automatic(None, Volume(arr), "minmax", min_voxels=5)
    assert labels.max() == 2
    assert (labels == 1).sum() == 5 * 36 and (labels == 2).sum() == 5 * 42
    assert set(np.unique(labels[arr == 0])) == {0}


def test_auto_command_writes_labels(tmp_path: Path, tiny_ckpt: str, capsys) -> None:
    img = _phantom(tmp_path / "ct.nii.gz")
    out = tmp_path / "auto.nii.gz"
    rc = main(["auto", str(img), "-o", str(out), "--slices", "4", "7", "--points-per-side", "3",
               "--pred-iou-thresh", "0", "--stability-thresh", "0", "--min-voxels", "1",
               *_args(tiny_ckpt)[:-2], "--no-progress"])  # fmt: skip
    assert rc == 0
    lab = read_volume(out)
    assert lab.array.shape == SHAPE and not lab.array[:4].any() and not lab.array[8:].any()
    assert f"{int(lab.array.max())} objects" in capsys.readouterr().out


def test_info(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "lite_medsam" in out and "tiny" in out and "auto -> " in out and "cache: " in out


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_shard_cases(tmp_path: Path, tiny_ckpt: str) -> None:
    for k in range(3):
        _phantom(tmp_path / f"v{k}.nii.gz", seed=k)
    cases = [{"image": f"v{k}.nii.gz", "objects": [{"box3d": BOX3D}]} for k in range(3)]
    man = _manifest(tmp_path, cases)
    summary = tmp_path / "summary.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "napari_sam_med.cli", "segment", "--manifest", str(man), "--out-dir",
         str(tmp_path / "out"), "--summary", str(summary), *_args(tiny_ckpt)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(summary.read_text())
    assert [r["name"] for r in res] == ["v0_seg", "v1_seg", "v2_seg"]
    assert [r["worker"] for r in res] == ["rank 0/2", "rank 1/2", "rank 0/2"]
    assert all((tmp_path / "out" / f"v{k}_seg.nii.gz").is_file() for k in range(3))
    assert proc.stdout.count("seconds") == 1  # one merged table, from rank 0


@pytest.mark.slow
def test_lite_medsam_segments_ct_phantom_lesions(tmp_path: Path) -> None:
    """The README command: LiteMedSAM, both lesions' 3D boxes from sample_data.json."""
    from napari_sam_med.build import CheckpointError, locate_lite_medsam_weights

    try:
        locate_lite_medsam_weights(verify=False)
    except CheckpointError as exc:
        pytest.skip(f"LiteMedSAM weights unavailable: {exc}")
    meta = json.loads((REPO / "sample_data" / "sample_data.json").read_text())["volumes"]
    objs = meta["ct_phantom"]["objects"]
    out = tmp_path / "demo_out" / "ct_phantom_seg.nii.gz"
    argv = ["segment", str(REPO / "sample_data" / "ct_phantom.nii.gz"), "-o", str(out),
            "--qc", str(tmp_path / "demo_out" / "qc"), "--device", "cpu", "--no-disk-cache",
            "--no-progress"]  # fmt: skip
    for o in objs:
        argv += ["--box3d", *map(str, o["box3d"])]
    assert main(argv) == 0
    pred = read_volume(out).array
    truth = read_volume(REPO / "sample_data" / "ct_phantom_label.nii.gz").array
    for o in objs:
        a, b = pred == o["label"], truth == o["label"]
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.85, f"{o['name']}: Dice {dice:.3f}"
    assert (tmp_path / "demo_out" / "qc" / "ct_phantom_seg_qc.png").is_file()
