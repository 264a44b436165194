"""Manifest parsing, validation errors (file, case, field, value, expectation), voxel/world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.volume.geometry import Volume, index_to_world
from napari_sam_med.volume.manifest import (
    ManifestError,
    file_stem,
    load_manifest,
    parse_manifest,
)
from napari_sam_med.volume.voxel_prompts import object_prompts


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "sub" / "cases.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


GOOD = {
    "cases": [
        {
            "image": "ct1.nii.gz",
            "output": "out/ct1_seg.nii.gz",
            "modality": "CT",
            "objects": [
                {"label": 1, "box3d": [10, 12, 3, 20, 22, 7]},
                {"label": 2, "box": [1, 2, 5, 6], "slice": 4, "name": "node"},
                {
                    "label": 3,
                    "points": [[5, 6, 2], [7, 8, 2], [5, 5, 3]],
                    "point_labels": [1, 0, 1],
                },
            ],
        },
        {"image": "/abs/mr.nrrd", "objects": [{"box3d": [0, 0, 0, 1, 1, 1]}], "preset": "mr"},
    ]
}


def test_good_manifest_paths_and_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    cases = load_manifest(path, out_dir=tmp_path / "results")
    a, b = cases
    assert a.image == (path.parent / "ct1.nii.gz").resolve()
    # With --out-dir, relative outputs resolve against it; missing outputs are named from the image.
    assert a.output == (tmp_path / "results" / "out" / "ct1_seg.nii.gz").resolve()
    assert b.image == Path("/abs/mr.nrrd")
    assert b.output == (tmp_path / "results" / "mr_seg.nii.gz").resolve()
    assert (a.name, b.name) == ("ct1_seg", "mr_seg")
    assert [o.label for o in a.objects] == [1, 2, 3]
    assert b.objects[0].label == 1 and b.preset == "mr" and a.modality == "CT"
    assert a.objects[1].box == [1, 2, 5, 6] and a.objects[1].slice == 4
    assert a.objects[2].point_labels == [1, 0, 1]
    # Without --out-dir, relative outputs resolve against the manifest's folder.
    no_out = load_manifest(_write(tmp_path, {"cases": GOOD["cases"][:1]}))
    assert no_out[0].output == (path.parent / "out" / "ct1_seg.nii.gz").resolve()


def test_missing_output_without_out_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, {"cases": [GOOD["cases"][1]]})
    with pytest.raises(ManifestError, match=r"cases\[0\]\.output = null; expected .*--out-dir"):
        load_manifest(path)


def _one(objects, **case) -> dict:
    return {"cases": [{"image": "a.nii", "output": "o.nii", "objects": objects, **case}]}


BAD = [
    ({"cases": []}, r"cases = \[\]; expected a non-empty list"),
    ({"case": [1]}, r"the top level key 'case'"),
    ({"cases": [{"image": 3, "objects": []}]}, r"cases\[0\]\.image = 3; expected a file path"),
    (_one([{"box3d": [0] * 6}], output="a.png"),
     r"cases\[0\]\.output = '.*a\.png'; expected a file ending in"),
    (_one([]), r"cases\[0\]\.objects = \[\]; expected a non-empty list"),
    (_one([{"box3d": [1, 2, 3]}]),
     r"cases\[0\]\.objects\[0\]\.box3d = \[1, 2, 3\]; expected 6 finite numbers \[x0, y0, z0"),
    (_one([{"box3d": [5, 0, 0, 1, 1, 1]}]),
     r"box3d = \[5\.0, 0\.0, 0\.0, 1\.0, 1\.0, 1\.0\]; expected min corner first"),
    (_one([{"label": 0, "box3d": [0] * 6}]),
     r"objects\[0\]\.label = 0; expected an integer in 1\.\.65535"),
    (_one([{"label": 2, "box3d": [0] * 6}, {"label": 2, "box3d": [0] * 6}]),
     r"objects\[\]\.label = \[2\]; expected a distinct label"),
    (_one([{"box": [0, 0, 1, 1]}]), r"objects\[0\]\.slice = null; expected the slice of 'box'"),
    (_one([{"slice": 3, "points": [[1, 1, 1]]}]),
     r"objects\[0\]\.slice = 3; expected 'slice' only together with 'box'"),
    (_one([{"box3d": [0] * 6, "points": [[1, 1, 1]]}]),
     r"objects\[0\] = \[\"box3d\", \"points\"\]; expected 'box3d' alone"),
    (_one([{"points": [[1, 1, 1], [2, 2, 2]], "point_labels": [1]}]),
     r"point_labels = \[1\]; expected a list of 2 values"),
    (_one([{"points": [[1, 1, 1]], "point_labels": [0]}]),
     r"point_labels = \[0\]; expected at least one positive"),
    (_one([{"points": [[1, 1]]}]),
     r"points\[0\] = \[1, 1\]; expected 3 finite numbers \[x, y, z\]"),
    (_one([{"box3d": [0] * 6, "space": "mm"}]),
     r"objects\[0\] = 'mm'; expected 'voxel' \(indices, default\) or 'world'"),
    (_one([{"box3d": [0] * 6, "colour": 1}]), r"objects\[0\] key 'colour' = 1; expected one of"),
    ({"cases": [_one([{"box3d": [0] * 6}])["cases"][0],
                _one([{"box3d": [0] * 6}], image="b.nii")["cases"][0]]},
     r"cases\[1\]\.output = '.*o\.nii'; expected a value distinct from cases\[0\]"),
    (_one([{"box3d": [0] * 6}], name="../x"),
     r"cases\[0\]\.name = '\.\./x'; expected a file-name-safe"),
    (_one([{"box3d": [0] * 6}], component=-1),
     r"cases\[0\]\.component = -1; expected an integer >= 0"),
]  # fmt: skip


@pytest.mark.parametrize("data,pattern", BAD)
def test_bad_manifests_name_file_case_field_value(tmp_path: Path, data, pattern: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ManifestError, match=pattern) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"manifest {path}: ")


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"cases": [\n  {"image": "a.nii",}\n]}')
    with pytest.raises(
        ManifestError, match=r"cases\.json: invalid JSON at line 2, column 21: Expecting property"
    ):
        load_manifest(path)
    with pytest.raises(ManifestError, match=r"nope\.json: no such file"):
        load_manifest(tmp_path / "nope.json")


def _vol(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Volume:
    # size (x, y, z) = (40, 30, 10); spacing (x, y, z) = (0.5, 2, 3) mm
    return Volume(np.zeros((10, 30, 40), np.int16), (0.5, 2.0, 3.0), (10.0, -5.0, 7.0), direction)


def _prompts(objects, space="voxel"):
    return parse_manifest(
        {"space": space, "cases": [{"image": "a.nii", "output": "o.nii", "objects": objects}]},
        "manifest m.json",
        "/tmp",
    )[0]


def test_voxel_prompts_and_bounds() -> None:
    case = _prompts([
        {"box3d": [1, 2, 3, 39, 29, 9]},
        {"box": [1, 2, 5, 6], "slice": 4, "points": [[3, 4, 4], [4, 4, 4]], "point_labels": [1, 0]},
        {"points": [[3, 4, 2], [8, 9, 6]]},
    ])  # fmt: skip
    vol = _vol()
    a, b, c = (object_prompts(o, vol) for o in case.objects)
    assert a.box3d == [1, 2, 3, 39, 29, 9] and not a.key_prompts
    assert b.key_prompts == {
        4: {"box": [1, 2, 5, 6], "points": [[3, 4], [4, 4]], "point_labels": [1, 0]}
    }
    assert c.key_prompts == {2: {"points": [[3, 4]], "point_labels": [1]},
                             6: {"points": [[8, 9]], "point_labels": [1]}}  # fmt: skip
    out = _prompts([{"box3d": [1, 2, 3, 40, 29, 9]}]).objects[0]
    with pytest.raises(ManifestError, match=r"m\.json: cases\[0\]\.objects\[0\]\.box3d: value "
                       r"\[1, 2, 3, 40, 29, 9\] \(x = 40\) lies outside the volume; expected x in "
                       r"0\.\.39"):  # fmt: skip
        object_prompts(out, vol)
    frac = _prompts([{"points": [[3, 4, 2.5]]}]).objects[0]
    with pytest.raises(ManifestError, match=r"points\[0\]: z = 2\.5; expected an integer slice"):
        object_prompts(frac, vol)
    neg = _prompts([{"points": [[3, 4, 2], [3, 4, 5]], "point_labels": [1, 0]}]).objects[0]
    with pytest.raises(ManifestError, match=r"slice 5 has only negative points"):
        object_prompts(neg, vol)


def test_world_prompts_identity_direction() -> None:
    vol = _vol()
    # voxel (x, y, z) -> world = origin + spacing * ijk; choose world points of known voxels
    w0 = index_to_world(vol, [2, 3, 1])  # (11, 1, 10)
    w1 = index_to_world(vol, [30, 20, 8])  # (25, 35, 31)
    case = _prompts([
        {"box3d": [*w0, *w1]},
        {"box": [w0[0], w0[1], w1[0], w1[1]], "slice": float(index_to_world(vol, [0, 0, 5])[2])},
        {"points": [list(index_to_world(vol, [4.0, 5.0, 6.2]))]},
    ], space="world")  # fmt: skip
    a, b, c = (object_prompts(o, vol) for o in case.objects)
    assert a.box3d == [2, 3, 1, 30, 20, 8]
    assert b.key_prompts == {5: {"box": [2, 3, 30, 20]}}
    ((z, prompt),) = c.key_prompts.items()
    assert z == 6 and np.allclose(prompt["points"], [[4.0, 5.0]])
    far = _prompts([{"box3d": [0, 0, 0, 500, 10, 10]}], space="world").objects[0]
    with pytest.raises(ManifestError, match=r"after conversion from LPS mm"):
        object_prompts(far, vol)


def test_world_box_with_flipped_axes_is_reordered() -> None:
    # x and y axes point the other way in world space (a typical RAS-stored NIfTI seen in LPS).
    vol = _vol(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    w_a = index_to_world(vol, [5, 6, 2])
    w_b = index_to_world(vol, [15, 16, 4])
    lo, hi = np.minimum(w_a, w_b), np.maximum(w_a, w_b)  # world min corner is voxel max corner
    obj = _prompts([{"box3d": [*lo, *hi]}], space="world").objects[0]
    assert object_prompts(obj, vol).box3d == [5, 6, 2, 15, 16, 4]


def test_file_stem() -> None:
    assert file_stem(Path("a/b/ct1.nii.gz")) == "ct1"
    assert file_stem(Path("x.mha")) == "x"
