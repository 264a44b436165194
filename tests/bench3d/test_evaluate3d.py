"""``sam-med evaluate --mode 3d`` end to end with the tiny model on small synthetic volumes:
CSV/JSON/PNG written, the baseline row, an existing run refused (naming the file) unless
--overwrite, --resume continuing, case tables, splits and engine overrides."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.bench3d.cases import load_cases, modality_of, select_group
from napari_sam_med.bench3d.cli import parse_engine_overrides
from napari_sam_med.cli import main
from napari_sam_med.export import EvalCase

pytest.importorskip("scipy")


def _write(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> None:
    from napari_sam_med.volume.geometry import Volume
    from napari_sam_med.volume.io import write_volume

    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(Volume(array, spacing), path)


def _dataset(root: Path) -> Path:
    """P1/CT, P1/MR_T1 and P2/CT (image + mask, 6 x 32 x 32) and a case table beside them."""
    rng = np.random.default_rng(0)
    rows = ["image,label,patient,case,modality"]
    for patient, name, mod in (("P1", "CT", "CT"), ("P1", "MR_T1", "MR"), ("P2", "CT", "CT")):
        img = rng.normal(0, 20, (6, 32, 32)).astype(np.int16)
        lbl = np.zeros(img.shape, np.uint8)
        lbl[1:5, 8:20, 10:24] = 1
        lbl[2, 6:22, 8:26] = 1
        img[lbl > 0] += 300
        _write(root / patient / f"{name}_image.nii.gz", img)
        _write(root / patient / f"{name}_mask.nii.gz", lbl)
        rows.append(f"{patient}/{name}_image.nii.gz,{patient}/{name}_mask.nii.gz,{patient},"
                    f"{patient}/{name},{mod}")  # fmt: skip
    (root / "pool.csv").write_text("\n".join(rows) + "\n")
    (root / "split.json").write_text(json.dumps({"train": ["P2/CT"], "val": ["P1/CT", "P1/MR_T1"]}))
    return root


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(root / "pool.csv"), "--mode", "3d", "--models", "tiny",
            "--baseline", "tiny", "--split", str(root / "split.json"), "--clicks", "2",
            "--out-dir", str(out), "--device", "cpu", "--no-progress", "--threads", "1",
            *extra]  # fmt: skip


def test_evaluate_3d_end_to_end_writes_reports_and_guards_the_output(tmp_path, capsys) -> None:
    root = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert main(_argv(root, out, "--starts", "box3d,point")) == 0
    text = capsys.readouterr().out
    assert "cvpr24_procedure[tiny]" in text and "dice_auc" in text and "2 cases" in text

    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    got = {(r["model"], r["start"], r["group"]) for r in rows}
    assert ("tiny", "box3d", "CT") in got and ("tiny", "point", "MR") in got
    assert ("cvpr24_procedure[tiny]", "box3d", "all") in got
    assert not any(r["start"] == "box2d" for r in rows)
    base = next(r for r in rows if r["model"].startswith("cvpr24") and r["group"] == "all")
    assert base["dice_0"] and base["dice_1"] == "" and base["dice_auc"] == ""  # step 0 only
    tiny = next(r for r in rows if r["model"] == "tiny" and r["start"] == "box3d" and
                r["group"] == "all")  # fmt: skip
    assert 0.0 <= float(tiny["dice_2"]) <= 1.0 and 0.0 <= float(tiny["dice_auc"]) <= 1.0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["group"] == "val" and summary["failures"] == []
    recs = summary["cases"]
    assert {r["case"] for r in recs} == {"P1/CT", "P1/MR_T1"} and len(recs) == 2 * 3
    for r in recs:
        steps = 1 if r["baseline"] else 3
        assert len(r["dice"]) == len(r["nsd"]) == len(r["seconds"]) == steps
        for click in r["clicks"][1:]:
            assert click is None or (0 <= click[0] < 6 and click[3] in (0, 1))
    from PIL import Image

    assert Image.open(out / "dice_vs_clicks_box3d.png").size == (640, 420)
    assert (out / "dice_vs_clicks_point.png").exists() and (out / "cases.csv").exists()

    # an existing run is refused, naming the file; --overwrite starts again
    assert main(_argv(root, out)) == 2
    err = capsys.readouterr().err
    assert "run.json exists" in err and "--overwrite" in err
    assert main(_argv(root, out, "--starts", "box3d", "--cases", "1", "--overwrite")) == 0
    recs = json.loads((out / "summary.json").read_text())["cases"]
    assert {(r["case"], r["start"]) for r in recs} == {("P1/CT", "box3d")}
    assert not (out / "dice_vs_clicks_point.png").exists()


def test_resume_continues_and_checks_the_settings(tmp_path, capsys) -> None:
    import torch

    from napari_sam_med.build import build_sam, save_checkpoint

    root = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    torch.manual_seed(0)  # a file: the same weights in both runs (resume checks them)
    ckpt = save_checkpoint(build_sam("tiny", device="cpu"), tmp_path / "tiny.pt")
    first = _argv(root, out, "--starts", "box3d", "--baseline", "none", "--models", str(ckpt))
    assert main([*first, "--cases", "1"]) == 0
    lines = (out / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 1
    with open(out / "cases.jsonl", "a") as fh:
        fh.write('{"model": "tiny", "ca')  # a record cut short by a killed run
    assert main([*first, "--resume"]) == 0
    recs = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    assert [r["case"] for r in recs] == ["P1/CT", "P1/MR_T1"]  # the first kept, one added
    assert {r["model"] for r in recs} == {"tiny"}
    assert recs[0] == json.loads(lines[0])
    capsys.readouterr()
    assert main([*first, "--resume", "--clicks", "3"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_case_tables_splits_and_engine_overrides(tmp_path) -> None:
    root = _dataset(tmp_path / "data")
    cases = load_cases(root / "pool.csv")
    assert [c.name for c in cases] == ["P1/CT", "P1/MR_T1", "P2/CT"]
    assert cases[1].modality == "MR" and cases[0].modality == "CT"
    assert [c.name for c in load_cases(root)] == ["P1/CT", "P1/MR_T1", "P2/CT"]  # a folder
    assert [c.name for c in select_group(cases, root / "split.json", "train")] == ["P2/CT"]
    (root / "bad.json").write_text(json.dumps({"val": ["P9/CT"]}))
    with pytest.raises(ValueError, match="P9/CT"):
        select_group(cases, root / "bad.json")
    with pytest.raises(ValueError, match="group 'test'"):
        select_group(cases, root / "split.json", "test")
    (root / "broken.csv").write_text("image,label\nP1/none.nii.gz,P1/CT_mask.nii.gz\n")
    with pytest.raises(ValueError, match="broken.csv: row 2: .*none.nii.gz does not exist"):
        load_cases(root / "broken.csv")

    s = parse_engine_overrides(["box_margin=4.5", "use_mask_prompt=true", "min_area=9"])
    assert (s.box_margin, s.use_mask_prompt, s.min_area) == (4.5, True, 9)
    assert parse_engine_overrides(None).click_mode == "auto"
    with pytest.raises(ValueError, match="expected KEY=VALUE with KEY one of"):
        parse_engine_overrides(["margin=3"])
    with pytest.raises(ValueError, match="min_area=x: expected a int"):
        parse_engine_overrides(["min_area=x"])


def test_run_folder_resume_allows_settings_added_to_the_engine_later(tmp_path) -> None:
    from napari_sam_med.bench3d.store import RunFolder

    def header(**engine):
        return {"models": [{"name": "m"}], "settings": {"clicks": 5, "engine": engine}}

    RunFolder(tmp_path, header(box_margin=3.0), resume=False, overwrite=False)
    RunFolder(tmp_path, header(box_margin=3.0, new_rule=None), resume=True, overwrite=False)
    with pytest.raises(ValueError, match="differs in settings"):
        RunFolder(tmp_path, header(box_margin=4.0), resume=True, overwrite=False)
    with pytest.raises(ValueError, match="exclude each other"):
        RunFolder(tmp_path, header(box_margin=3.0), resume=True, overwrite=True)


def test_precision_is_honoured_recorded_and_checked_on_resume(tmp_path, capsys) -> None:
    root = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    argv = _argv(root, out, "--starts", "box3d", "--cases", "1", "--baseline", "none")
    assert main([*argv, "--precision", "bf16"]) == 0
    header = json.loads((out / "run.json").read_text())
    assert header["precision"] == "bf16"
    assert "bfloat16" in header["models"][0]["weights"]  # fast-mode embeddings kept apart
    fast_encoder = header["models"][0]["encoder"]
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2  # an fp32 run cannot continue a bf16 one
    assert "cannot resume" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    header = json.loads((out / "run.json").read_text())
    assert header["precision"] == "fp32" and "bfloat16" not in header["models"][0]["weights"]
    assert header["models"][0]["encoder"] != fast_encoder


def test_modality_of_uses_the_shared_name_rule() -> None:
    """The case's modality first, then its name (``T1``/``FLAIR`` are MR, as for training),
    then the voxel values (below -500 and above 0: CT)."""
    hu = np.array([-1000.0, 40.0])
    named = {"STS_1/CT": "CT", "x_MR": "MR", "p/T1": "MR", "p/flair": "MR", "p/scan": "CT"}
    assert {n: modality_of(EvalCase(n, "i", "l"), hu) for n in named} == named
    assert modality_of(EvalCase("p/scan", "i", "l", "MR"), hu) == "MR"
    assert modality_of(EvalCase("p/scan", "i", "l"), np.array([0.0, 9.0])) == "MR"
