"""QC overlay PNG, JSON trace, key-slice choice and the summary table."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_sam_med.errors import OutputExistsError
from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.qc import (
    CAPTION,
    PALETTE,
    TILE,
    _edge,
    key_slices,
    qc_paths,
    render_overlay,
    summary_table,
    write_json_atomic,
    write_qc,
)
from napari_sam_med.volume.segment import CaseResult
from napari_sam_med.volume.slices import SlicePrediction


def _pred(z, mask, iou=0.95, stability=0.95, source="propagated"):
    return SlicePrediction(z, mask, np.zeros((4, 4), np.float32), iou, stability, source)


def _object(shape=(10, 60, 80)) -> ObjectSegmentation:
    """A block lesion on slices 2..7; slice 4 is the box key slice, slice 6 looks weak."""
    obj = ObjectSegmentation(label=1, name="lesion")
    for z in range(2, 8):
        m = np.zeros(shape[1:], bool)
        r = 6 if z == 5 else 4  # slice 5 is the largest
        m[30 - r : 30 + r, 40 - r : 40 + r] = True
        obj.slices[z] = _pred(z, m, iou=0.5 if z == 6 else 0.95)
    obj.key_prompts = {4: {"box": [35.0, 25.0, 44.0, 34.0]}}
    obj.slices[4].source = "box"
    return obj


def test_edge_is_one_pixel_contour() -> None:
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    edge = _edge(m)
    assert edge.sum() == 8 and not edge[2, 2] and edge[1, 1]


def test_key_slices_pick_key_largest_ends_and_flagged() -> None:
    obj = _object()
    # key 4, largest 5, first 2, last 7, flagged 6 (low IoU)
    assert key_slices(obj) == [2, 4, 5, 6, 7]
    assert key_slices(ObjectSegmentation(label=2, key_prompts={3: {"box": [0, 0, 1, 1]}})) == [3]


def test_render_overlay_colours_zoom_and_aspect() -> None:
    shape = (10, 60, 80)
    obj = _object(shape)
    labels = obj.to_mask(shape).astype(np.uint16)
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(40, 10, shape).astype(np.int16), spacing=(0.5, 1.0, 3.0))
    img = render_overlay(vol, labels, [obj], "ct_soft_tissue", title="case")
    arr = np.asarray(img)
    # One row of 5 tiles. The zoom window is 48 voxels square (the minimum), which is
    # 24 mm wide and 48 mm high with 0.5 x 1.0 mm pixels: tiles are TILE/2 wide, TILE high.
    assert img.size == (5 * TILE // 2, CAPTION + CAPTION + TILE)
    red = np.all(arr == PALETTE[0], axis=-1)
    assert red[2 * CAPTION :].sum() > 100  # contours drawn in the label's colour
    green = np.all(arr == (0, 255, 0), axis=-1)
    tile_w = TILE // 2
    assert green[:, tile_w : 2 * tile_w].any()  # the box on key slice 4 (2nd tile) ...
    assert not green[:, :tile_w].any()  # ... and not on slice 2


def test_write_qc_files_and_trace(tmp_path: Path) -> None:
    shape = (10, 60, 80)
    obj = _object(shape)
    labels = obj.to_mask(shape).astype(np.uint16)
    vol = Volume(np.full(shape, 30, np.int16), spacing=(1.0, 1.0, 2.0))
    case = SimpleNamespace(name="ct1", image=tmp_path / "ct1.nii.gz", output=tmp_path / "o.nii.gz")
    png, js = write_qc(tmp_path / "qc", case, vol, labels, [obj], "ct_soft_tissue", {"voxels": 1})
    assert (png, js) == qc_paths(tmp_path / "qc", "ct1")
    assert Image.open(png).mode == "RGB"
    trace = json.loads(js.read_text())
    assert trace["case"] == "ct1" and trace["png"] == "ct1_qc.png"
    (o,) = trace["objects"]
    assert [r["z"] for r in o["trace"]] == [2, 3, 4, 5, 6, 7]
    assert [r["z"] for r in o["trace"] if r["flagged"]] == [6]
    assert o["key_prompts"] == [{"z": 4, "box": [35.0, 25.0, 44.0, 34.0]}]
    assert o["shown_slices"] == [2, 4, 5, 6, 7]
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["ct1_qc.json", "ct1_qc.png"]


def test_write_json_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json_atomic(path, {"x": np.int64(3), "t": (1, 2), "p": tmp_path})
    with pytest.raises(OutputExistsError, match=r"a\.json: already exists"):
        write_json_atomic(path, {"x": np.float32(1.5), "arr": np.arange(2)})
    write_json_atomic(path, {"x": np.float32(1.5), "arr": np.arange(2)}, overwrite=True)
    assert json.loads(path.read_text()) == {"x": 1.5, "arr": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_summary_table() -> None:
    rows = [
        CaseResult(0, "ct1", "a", "b", "ok", [{"label": 1}, {"label": 2}], 1234, 5.678, 12.34),
        CaseResult(1, "long_case_name", "a", "c", "failed", error="VolumeError: x: no such file"),
    ]
    lines = summary_table(rows).splitlines()
    assert lines[0].split() == ["case", "objects", "voxels", "volume", "mL", "seconds", "status"]
    assert lines[2].split() == ["ct1", "2", "1234", "5.68", "12.3", "ok"]
    assert lines[3].split() == ["long_case_name", "-", "0", "0.00", "0.0", "failed"]
    assert lines[4] == "FAILED long_case_name: VolumeError: x: no such file"
    assert len({len(lines[0]), len(lines[1])}) == 1  # aligned columns
