"""``napari_sam_med.evaluate`` and ``sam-med evaluate``: click simulator, metrics, reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.evaluate import (
    ClickSettings,
    ObjectResult,
    dice,
    evaluate_model,
    mask_box,
    next_click,
    object_slices,
    simulate_object,
    summarise,
)
from napari_sam_med.export import EvalCase, discover_cases

pytest.importorskip("scipy")
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_dice_and_box_hand_computed() -> None:
    a = _square(8, 8, 0, 2, 0, 2)  # 4 px
    b = _square(8, 8, 0, 2, 0, 1)  # 2 px, inside a
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert mask_box(_square(10, 12, 2, 5, 3, 9)).tolist() == [3, 2, 8, 4]


def test_next_click_centre_of_largest_error_region() -> None:
    gt = _square(21, 21, 5, 16, 5, 16)  # 11 x 11, centre (10, 10)
    assert next_click(np.zeros_like(gt), gt) == (10, 10, 1)  # all missed: positive at centre
    # a leak of 5 x 5 at the top-left beats a 1-pixel miss: negative click in the leak centre
    pred = gt | _square(21, 21, 0, 5, 0, 5)
    pred[15, 15] = False
    assert next_click(pred, gt) == (2, 2, 0)
    # no error: a positive click at the object's centre
    assert next_click(gt, gt) == (10, 10, 1)


def test_object_slices_largest_and_spread() -> None:
    m = np.zeros((10, 4, 4), bool)
    m[2:8, :2, :2] = True
    m[5] = True  # largest slice
    assert object_slices(m, 1) == [5]
    assert object_slices(m, 3) == [3, 5, 6]  # interior of 2..7 (no end caps), largest kept
    m[5] = False  # slices 2, 3, 4, 6, 7 remain
    m[6] = True  # and 6 is the largest
    assert object_slices(m, 2) == [3, 6]
    assert object_slices(np.zeros((3, 2, 2), bool)) == []


class _ScriptedSegmenter:
    """Returns a scripted mask per call and records the prompts it received."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks, self.calls = masks, []

    def embedding(self, z):
        return None

    def predict(self, z, box=None, points=None, labels=None, mask_input=None, source=""):
        from types import SimpleNamespace

        k = len(self.calls)
        self.calls.append((box, points, labels, mask_input))
        return SimpleNamespace(mask=self.masks[k], logits=np.full((4, 4), float(k)))


def test_simulate_object_click_protocol() -> None:
    gt = _square(21, 21, 5, 16, 5, 16)
    leak = gt | _square(21, 21, 0, 4, 0, 21)  # top rows leak
    miss = _square(21, 21, 5, 16, 5, 10)  # right part missing
    seg = _ScriptedSegmenter([leak, miss, gt])
    r = simulate_object(seg, 3, gt, ClickSettings(max_clicks=2), "m")
    assert r.dice == pytest.approx([dice(leak, gt), dice(miss, gt), 1.0])
    assert r.noc(0.85, 2) == 2 and r.noc(0.5, 2) == 0
    assert len(r.interaction_s) == 3
    box0, pts0, _, mask0 = seg.calls[0]
    assert box0.tolist() == [5, 5, 15, 15] and pts0 is None and mask0 is None
    _, pts1, lab1, mask1 = seg.calls[1]
    assert lab1.tolist() == [0] and pts1[0][1] < 4  # negative click in the leak
    assert mask1.shape == (1, 4, 4) and mask1.max() == 0.0  # logits of call 0
    _, pts2, lab2, mask2 = seg.calls[2]
    assert lab2.tolist() == [0, 1] and 10 <= pts2[1][0] <= 15  # then positive in the miss
    assert mask2.max() == 1.0
    seg = _ScriptedSegmenter([leak, miss])
    simulate_object(seg, 3, gt, ClickSettings(max_clicks=1, mask_input=False))
    assert seg.calls[1][3] is None


def test_summarise_noc_and_failures() -> None:
    a = ObjectResult("m", "c", 1, 0, dice=[0.5, 0.86, 0.95, 0.95, 0.95, 0.95], interaction_s=[1.0])
    b = ObjectResult("m", "c", 2, 0, dice=[0.5, 0.6, 0.7, 0.8, 0.8, 0.8], interaction_s=[3.0])
    row = summarise([a, b], ClickSettings(max_clicks=5))
    assert row["dice_box"] == pytest.approx(0.5) and row["dice_1"] == pytest.approx(0.73)
    assert row["dice_5"] == pytest.approx(0.875)
    assert row["noc85"] == pytest.approx((1 + 5) / 2) and row["failed85"] == 1
    assert row["noc90"] == pytest.approx((2 + 5) / 2) and row["failed90"] == 1
    assert row["interaction_s"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="threshold"):
        ClickSettings(thresholds=(85,))


def _write(path: Path, array: np.ndarray) -> str:
    from napari_sam_med.volume.geometry import Volume
    from napari_sam_med.volume.io import write_volume

    write_volume(Volume(array, (1.0, 1.0, 2.0)), path)
    return str(path)


def _synthetic(folder: Path, n: int = 2) -> None:
    rng = np.random.default_rng(0)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        img = rng.normal(0, 20, (4, 48, 48)).astype(np.int16)
        lbl = np.zeros(img.shape, np.uint8)
        lbl[1:3, 10 + i : 24, 12:30] = 1
        lbl[2, 30:40, 30:44] = 2
        img[lbl > 0] += 300
        _write(folder / "imagesTr" / f"case{i}_0000.nii.gz", img)
        _write(folder / "labelsTr" / f"case{i}.nii.gz", lbl)


def test_discover_cases_layouts_and_errors(tmp_path: Path) -> None:
    _synthetic(tmp_path / "ds")
    cases, names = discover_cases(tmp_path / "ds")
    assert [c.name for c in cases] == ["case0", "case1"] and names == {}
    entry = {"image": "imagesTr/case1_0000.nii.gz", "label": "labelsTr/case1.nii.gz"}
    meta = {"labels": {"0": "background", "1": "sarcoma"}, "modality": {"0": "CT"},
            "training": [entry]}  # fmt: skip
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    cases, names = discover_cases(tmp_path / "ds" / "dataset.json")
    assert names == {1: "sarcoma"} and cases[0].modality == "CT" and cases[0].name == "case1_0000"
    flat = discover_cases(SAMPLE)[0]
    assert sorted(c.name for c in flat) == ["ct_phantom", "mr_phantom"]
    meta["training"][0]["label"] = "labelsTr/missing.nii.gz"
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing.nii.gz does not exist"):
        discover_cases(tmp_path / "ds")
    nested = tmp_path / "nested" / "P1"
    nested.mkdir(parents=True)
    _write(nested / "CT_image.nii.gz", np.zeros((2, 4, 4), np.int16))
    _write(nested / "CT_mask.nii.gz", np.ones((2, 4, 4), np.uint8))
    _write(nested / "MR_image.nii.gz", np.zeros((2, 4, 4), np.int16))  # no label: skipped
    assert [c.name for c in discover_cases(tmp_path / "nested")[0]] == ["P1/CT"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image/label pairs"):
        discover_cases(tmp_path / "empty")


def test_evaluate_command_tiny_two_checkpoints(tmp_path: Path, capsys) -> None:
    import torch

    from napari_sam_med.build import build_sam, save_checkpoint

    _synthetic(tmp_path / "ds")
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_sam("tiny", device="cpu", inference=False)
        ckpts.append(str(save_checkpoint(model, tmp_path / f"tiny{seed}.pt")))
    out = tmp_path / "eval"
    argv = ["evaluate", str(tmp_path / "ds"), "--models", *ckpts, "--out-dir", str(out),
            "--max-clicks", "3", "--device", "cpu", "--no-progress",
            "--modality", "CT"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "tiny0" in text and "tiny1" in text and "noc85" in text
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["tiny0", "tiny1"]
    assert all(r["objects"] == "4" for r in rows)  # 2 cases x 2 labels, one slice each
    assert all(len(r["curve"].split(";")) == 4 for r in rows)
    with open(out / "objects.csv") as fh:
        objs = list(csv.DictReader(fh))
    assert len(objs) == 8 and {o["z"] for o in objs if o["label"] == "2"} == {"2"}
    from PIL import Image

    assert Image.open(out / "dice_vs_clicks.png").size == (640, 420)
    assert main(["evaluate", str(tmp_path / "nope"), "--model", ckpts[0]]) == 2
    assert "nope: expected a dataset.json" in capsys.readouterr().err


def test_lite_medsam_beats_tiny_on_sample_ct(lite_medsam, tiny_model) -> None:
    case = EvalCase(
        "ct", str(SAMPLE / "ct_phantom.nii.gz"), str(SAMPLE / "ct_phantom_label.nii.gz"), "CT"
    )
    settings = ClickSettings(max_clicks=1)
    lite = summarise(evaluate_model(lite_medsam, [case], settings, "lite"), settings)
    tiny = summarise(evaluate_model(tiny_model, [case], settings, "tiny"), settings)
    assert lite["objects"] == tiny["objects"] == 2
    assert lite["dice_box"] > 0.85 and tiny["dice_box"] < 0.5
    assert lite["dice_1"] > tiny["dice_1"] + 0.3
