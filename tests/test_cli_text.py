"""Text prompts in 3D: the slice search + propagation engine, the manifest and ``--text``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.cli import main
from napari_sam_med.volume.manifest import ManifestError, parse_manifest
from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.propagate import Propagator, run
from napari_sam_med.volume.slices import SlicePrediction, SliceSegmenter
from napari_sam_med.volume.text3d import segment_text
from tests.test_cli import SHAPE, _args, _phantom
from tests.text_fakes import register_fake, text_checkpoint

# ---------------------------------------------------------------- engine (scripted 2D)
RADII = {2: 3, 3: 6, 4: 8, 5: 9, 6: 8, 7: 6, 8: 3}  # the object's disc radius per slice


class ScriptedSlices:
    """Stands in for the 2D model: a disc per slice, with scripted IoU for text prompts."""

    def __init__(self, text_iou: dict[int, float]) -> None:
        self.text_iou = text_iou
        self.calls: list[tuple[int, str]] = []

    def __call__(self, seg, z, box=None, points=None, labels=None, mask_input=None,
                 source="prompt", multimask=False, text=None):  # fmt: skip
        self.calls.append((int(z), "text" if box is None else "box"))
        yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
        r = RADII.get(int(z), 0)
        mask = (xx - 30) ** 2 + (yy - 22) ** 2 < r * r
        if text is not None and box is None:
            iou = self.text_iou.get(int(z), 0.1)
        else:
            iou = 0.95 if mask.any() else 0.1
        logits = np.where(mask[::2, ::2], 10.0, -10.0).astype(np.float32)
        return SlicePrediction(int(z), mask, logits, iou, 1.0, source, {"text": text})


@pytest.fixture()
def engine(tiny_model, monkeypatch):
    def make(text_iou):
        script = ScriptedSlices(text_iou)
        monkeypatch.setattr(SliceSegmenter, "predict", lambda seg, *a, **k: script(seg, *a, **k))
        arr = np.zeros(SHAPE, np.float32)
        return Propagator(SliceSegmenter(tiny_model, arr)), script

    return make


def test_text_search_seeds_on_best_slice_and_propagates(engine) -> None:
    prop, script = engine({3: 0.7, 5: 0.9, 6: 0.9, 9: 0.99})  # 9: confident but empty
    obj = ObjectSegmentation(label=1)
    events = run(segment_text(prop, obj, "tumour"))
    assert [e.z for e in events[: SHAPE[0]]] == list(range(SHAPE[0]))  # every slice searched
    assert all(e.total == SHAPE[0] for e in events[: SHAPE[0]])
    # 5 and 6 tie on predicted IoU; 5 has the larger mask; 9 has no mask
    assert obj.key_prompts == {5: {"text": "tumour"}}
    assert sorted(obj.slices) == sorted(RADII)  # propagated from 5 down to 2 and up to 8
    assert obj.slices[5].source == "text"
    assert {obj.slices[z].source for z in RADII if z != 5} == {"propagated"}
    assert obj.stop_reasons["down"] == "empty" and obj.stop_reasons["up"] == "empty"
    assert obj.stop_reasons["search"].startswith("seed slice 5: predicted IoU 0.90")
    assert "low confidence" not in obj.stop_reasons["search"]


def test_text_search_range_and_not_found(engine) -> None:
    prop, _ = engine({3: 0.7, 5: 0.9})
    obj = ObjectSegmentation(label=1)
    run(segment_text(prop, obj, "tumour", z_range=(2, 4)))
    assert list(obj.key_prompts) == [3]  # the best slice inside the range
    assert sorted(obj.slices) == sorted(RADII)  # propagation may leave the search range
    prop, _ = engine({})  # masks everywhere in RADII, but every text IoU is low (0.1)
    low = ObjectSegmentation(label=1)
    run(segment_text(prop, low, "tumour"))
    assert sorted(low.slices) == sorted(RADII)  # the relative ranking still seeds
    assert "low confidence" in low.stop_reasons["search"]
    empty = ObjectSegmentation(label=1)
    run(segment_text(prop, empty, "tumour", z_range=(0, 1)))  # no mask on these slices
    assert empty.slices == {} and "no mask for 'tumour'" in empty.stop_reasons["search"]
    with pytest.raises(ValueError, match="outside the volume"):
        run(segment_text(prop, empty, "tumour", z_range=(0, 99)))


# ----------------------------------------------------------------------- manifest
def test_manifest_text_prompts() -> None:
    objects = [
        {"text": " tumour ", "text_slices": [2, 8]},
        {"label": 3, "box3d": [1, 1, 1, 5, 5, 5], "text": "oedema"},
        {"label": 4, "points": [[3, 4, 5]], "text": "cyst"},
    ]
    case = {"image": "/x/ct.nii.gz", "output": "/x/o.nii.gz", "objects": objects}
    spec = parse_manifest({"cases": [case]}, "m.json", Path("/x"))[0]
    assert spec.objects[0].to_json()["text"] == "tumour"
    assert spec.objects[0].text_slices == [2, 8] and spec.objects[1].text == "oedema"

    def bad(obj: dict, match: str) -> None:
        with pytest.raises(ManifestError, match=match):
            parse_manifest({"cases": [{**case, "objects": [obj]}]}, "m.json", Path("/x"))

    bad({"text": ""}, r"text = ''; expected a non-empty string")
    bad({"text": 3}, "text = 3")
    bad({"text": "t", "text_slices": [5, 2]}, r"text_slices = \[5, 2\]")
    bad({"box3d": [1, 1, 1, 5, 5, 5], "text_slices": [1, 2]}, "only with a 'text' prompt")
    bad({"label": 1}, "'points' or 'text'")


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory) -> str:
    return str(text_checkpoint(tmp_path_factory.mktemp("model") / "tiny_text.pt"))


def test_cli_text_alone_and_with_box(tmp_path: Path, text_ckpt: str, capsys) -> None:
    fake = register_fake()
    img = _phantom(tmp_path / "ct.nii.gz")
    out, summary = tmp_path / "seg.nii.gz", tmp_path / "summary.json"
    opts = ["--summary", str(summary), "--qc", str(tmp_path / "qc")]
    rc = main(["segment", str(img), "--text", "tumour", "--text-slices", "2", "9", "-o", str(out),
               *opts] + _args(text_ckpt))  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()
    assert fake.calls == [["tumour"]]  # 8 searched slices, one encoding (cached)
    row = json.loads(summary.read_text())[0]
    assert row["status"] in ("ok", "empty") and row["objects"][0]["label"] == 1
    marker = json.loads((tmp_path / "seg.sam-med.json").read_text())
    assert marker["fingerprint"]["objects"][0]["text"] == "tumour"
    assert marker["fingerprint"]["objects"][0]["text_slices"] == [2, 9]
    out2 = tmp_path / "seg_box.nii.gz"
    rc = main(["segment", str(img), "--text", "tumour", "--box3d", "18", "12", "3", "42", "32", "9",
               "-o", str(out2), "--qc", str(tmp_path / "qc2")] + _args(text_ckpt))  # fmt: skip
    assert rc == 0 and out2.is_file()
    trace = json.loads(next((tmp_path / "qc2").glob("*_qc.json")).read_text())
    assert "tumour" in json.dumps(trace)  # the text reached the key slice's prompt


def test_cli_text_refused_by_models_without_text(tmp_path: Path, tiny_model, capsys) -> None:
    from napari_sam_med.build import save_checkpoint

    ckpt = save_checkpoint(tiny_model, tmp_path / "plain.pt")
    img = _phantom(tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    rc = main(["segment", str(img), "--text", "tumour", "-o", str(out)] + _args(str(ckpt)))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "plain.pt has no text-prompt support" in err and len(err.strip().splitlines()) == 1
    assert err.startswith("sam-med: error: text prompts need a checkpoint trained with text")
    rc = main(["segment", str(img), "--text-slices", "1", "2", "--box3d", *"1 1 1 5 5 5".split(),
               "-o", str(out)] + _args(str(ckpt)))  # fmt: skip
    assert rc == 2 and "--text-slices goes with --text alone" in capsys.readouterr().err


def test_cli_text_without_the_text_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    from dataclasses import replace
    from importlib import metadata

    from napari_sam_med.build import build_model, save_checkpoint
    from napari_sam_med.config import REGISTRY
    from napari_sam_med.text import encoders

    model = build_model(replace(REGISTRY["tiny"], text_dim=384))
    ckpt = save_checkpoint(model, tmp_path / "minilm_text.pt", metadata={"text_encoder": "minilm"})

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)  # read by weights.locate_in_distribution
    monkeypatch.setattr(encoders, "_LOADED", {})
    img = _phantom(tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    rc = main(["segment", str(img), "--text", "tumour", "-o", str(out)] + _args(str(ckpt)))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "minilm_text.pt" in err and "pip install 'napari-sam-med[text]'" in err
