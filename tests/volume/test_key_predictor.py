"""The public extension point of ``Propagator``: a key-slice predictor (``pinned`` masks or
any other), used by the plugin and the replay instead of overriding a private method."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.prompt import SlicePrompt
from napari_sam_med.volume.propagate import Propagator, pinned, run
from napari_sam_med.volume.slices import SlicePrediction, SliceSegmenter

PACKAGE = Path(__file__).resolve().parents[2] / "napari_sam_med"


def _blob(shape=(7, 40, 48)):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    blob = ((z - 3) / 2.6) ** 2 + ((y - 20) / 9) ** 2 + ((x - 24) / 11) ** 2 <= 1
    vol = np.random.default_rng(2).normal(0, 5, shape).astype(np.float32) + 100 * blob
    return vol, blob


def _pred(z: int, mask: np.ndarray, source: str) -> SlicePrediction:
    return SlicePrediction(z, mask.copy(), np.zeros((8, 8), np.float32), 0.9, 0.9, source)


def test_a_custom_key_predictor_predicts_key_slices_and_none_falls_back(tiny_model) -> None:
    vol, blob = _blob()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    seen = []

    def key_predictor(z: int, prompt: SlicePrompt, correction: bool):
        seen.append((z, prompt, correction))
        return _pred(z, blob[z], "mine") if z == 3 else None

    obj = ObjectSegmentation(
        1, key_prompts={3: {"box": [13, 11, 35, 29]}, 5: SlicePrompt(box=(15, 14, 33, 26))}
    )
    run(Propagator(seg, key_predictor=key_predictor).key_slices(obj, z_range=(3, 5)))
    assert [(z, c) for z, _, c in seen] == [(3, False), (5, False)]
    assert all(isinstance(p, SlicePrompt) for _, p, _ in seen)  # dicts are read once
    assert seen[0][1] == {"box": [13, 11, 35, 29]}
    assert obj.slices[3].source == "mine"
    np.testing.assert_array_equal(obj.slices[3].mask, blob[3])
    assert obj.slices[5].source == "box"  # None: the model predicted it


def test_pinned_keeps_the_accepted_mask_without_sharing_it(tiny_model) -> None:
    vol, blob = _blob()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    pin = _pred(3, blob[3], "prompt")
    obj = ObjectSegmentation(1, key_prompts={3: SlicePrompt(box=(13, 11, 35, 29))})
    prop = Propagator(seg, key_predictor=pinned({3: pin}))
    run(prop.key_slices(obj, z_range=(2, 4), clip=(0, 0, 23, 39)))
    key = obj.slices[3]
    assert key.source == "prompt" and key is not pin
    np.testing.assert_array_equal(key.mask, blob[3] & (np.arange(48) <= 23)[None])
    assert pin.mask.sum() == blob[3].sum()  # the clip did not touch the pinned mask
    assert set(obj.slices) <= {2, 3, 4} and {2, 4} & set(obj.slices) or obj.stop_reasons
    # a correction of a pinned key slice keeps the pin too
    run(prop.correct(obj, 3))
    np.testing.assert_array_equal(obj.slices[3].mask, blob[3])


def test_box_edits_replace_the_prompt_instead_of_adding_keys(tiny_model) -> None:
    from napari_sam_med.volume.propagate import PropagationSettings

    vol, _ = _blob()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    given = SlicePrompt(box=(13, 11, 30, 29), points=((34.0, 20.0),), point_labels=(1,))
    obj = ObjectSegmentation(1, key_prompts={3: given})
    prop = Propagator(seg, PropagationSettings(click_mode="box"))
    prop.predict_key(obj, 3)
    edited = obj.key_prompts[3]
    assert given.edited_box is None  # the user's prompt is unchanged
    assert edited.replace(edited_box=None) == given and edited.edited_box[2] > 34.0
    assert obj.key_prompts[3].to_json()["edited_box"] == list(edited.edited_box)


def test_nothing_subclasses_propagator_or_calls_its_private_key_method() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Propagator" for b in node.bases
            ):
                offenders.append(f"{path.name}: class {node.name}(Propagator)")
            if isinstance(node, ast.Attribute) and node.attr == "_predict_key":
                offenders.append(f"{path.name}: ._predict_key")
    assert offenders == []
