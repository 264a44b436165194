"""The 3D engine: 3D box, one 2D prompt with stop criteria, key slices, corrections, objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam_med.volume.io import read_volume
from napari_sam_med.volume.objects import ObjectSegmentation, compose_labels
from napari_sam_med.volume.propagate import Progress, PropagationSettings, Propagator, run
from napari_sam_med.volume.slices import SliceSegmenter

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum()) + int(b.sum()), 1)


@pytest.fixture(scope="module")
def sample_ct():
    meta = json.loads((SAMPLE_DATA / "sample_data.json").read_text())["volumes"]["ct_phantom"]
    image = read_volume(SAMPLE_DATA / meta["image"])
    label = read_volume(SAMPLE_DATA / meta["label"]).array
    return image, label, meta


@pytest.fixture(scope="module")
def ct_segmenter(lite_medsam, sample_ct):
    image, _, meta = sample_ct
    return SliceSegmenter(lite_medsam, image.array, meta["preset"])


def blob_volume(shape=(9, 48, 80)) -> tuple[np.ndarray, np.ndarray]:
    """A non-square, anisotropic-looking volume with one bright ellipsoid."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    blob = ((z - 4) / 3.5) ** 2 + ((y - 24) / 10) ** 2 + ((x - 50) / 16) ** 2 <= 1
    rng = np.random.default_rng(1)
    vol = rng.normal(0, 10, shape).astype(np.float32) + 120 * blob
    return vol, blob


def test_box3d_on_sample_ct(ct_segmenter, sample_ct):
    image, label, meta = sample_ct
    spec = meta["objects"][0]
    x0, y0, z0, x1, y1, z1 = spec["box3d"]
    obj = ObjectSegmentation(spec["label"], spec["name"])
    events = run(Propagator(ct_segmenter).box3d(obj, spec["box3d"]))
    assert all(isinstance(e, Progress) for e in events)
    assert events[-1].done == events[-1].total == z1 - z0 + 1
    mask = obj.to_mask(label.shape)
    assert dice(mask, label == spec["label"]) > 0.85
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    assert zs.min() >= z0 and zs.max() <= z1  # stays inside the z-range
    ys, xs = np.nonzero(mask.any(axis=0))
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
    trace = obj.qc_trace()
    assert {r["source"] for r in trace} == {"box", "propagated"}
    assert all(0 <= r["predicted_iou"] <= 1.5 and r["area"] > 0 for r in trace)
    summary = obj.summary(image.spacing)
    expected_ml = mask.sum() * np.prod(image.spacing) / 1000
    assert summary["volume_ml"] == pytest.approx(expected_ml, rel=1e-3)


def test_one_2d_box_propagates_until_the_object_ends(ct_segmenter, sample_ct):
    _, label, meta = sample_ct
    spec = meta["objects"][0]
    target = label == spec["label"]
    z = int(np.argmax(target.sum(axis=(1, 2))))
    ys, xs = np.nonzero(target[z])
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    obj = ObjectSegmentation(1, key_prompts={z: {"box": box}})
    run(Propagator(ct_segmenter).key_slices(obj))
    assert set(obj.stop_reasons) == {"down", "up"}
    valid = {
        "empty",
        "low_iou",
        "low_stability",
        "area_jump",
        "centroid_jump",
        "intensity_jump",
        "volume_edge",
    }
    assert set(obj.stop_reasons.values()) <= valid
    mask = obj.to_mask(label.shape)
    assert dice(mask, target) > 0.8
    zt = np.nonzero(target.any(axis=(1, 2)))[0]
    zm = np.nonzero(mask.any(axis=(1, 2)))[0]
    assert abs(int(zm.min()) - int(zt.min())) <= 2 and abs(int(zm.max()) - int(zt.max())) <= 2


def test_correction_changes_only_nearby_slices(ct_segmenter, sample_ct):
    _, label, meta = sample_ct
    spec = meta["objects"][0]
    obj = ObjectSegmentation(1)
    prop = Propagator(ct_segmenter)
    run(prop.box3d(obj, spec["box3d"]))
    before = {z: p.mask.copy() for z, p in obj.slices.items()}
    z0, z1 = spec["box3d"][2], spec["box3d"][5]
    zc = z0 + 1
    ys, xs = np.nonzero(obj.slices[zc].mask)
    # a negative click on the object's right-most column on that slice
    events = run(
        prop.correct(
            obj, zc, points=np.array([[xs.max(), ys[np.argmax(xs)]]]), labels=np.array([0])
        )
    )
    assert events[0].message == "corrected slice"
    assert obj.slices[zc].source == "correction"
    touched = {e.z for e in events}
    assert max(abs(z - zc) for z in touched) < (z1 - z0)  # stopped before re-doing everything
    untouched = [z for z in before if z not in touched]
    assert untouched, "a local correction must leave distant slices alone"
    for z in untouched:
        np.testing.assert_array_equal(obj.slices[z].mask, before[z])


def test_non_square_anisotropic_volume_with_tiny_model(tiny_model):
    vol, blob = blob_volume()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    obj = ObjectSegmentation(1)
    box = [34, 14, 1, 66, 34, 7]
    events = run(Propagator(seg).box3d(obj, box))
    assert len(events) == 7 or obj.stop_reasons  # random weights may end early on empty
    for z, p in obj.slices.items():
        assert 1 <= z <= 7 and p.mask.shape == (48, 80)
        ys, xs = np.nonzero(p.mask)
        if len(xs):
            assert xs.min() >= 34 and xs.max() <= 66 and ys.min() >= 14 and ys.max() <= 34


def test_key_slices_between_and_beyond(tiny_model, monkeypatch):
    vol, blob = blob_volume()
    seg = SliceSegmenter(tiny_model, vol, "minmax")

    # a deterministic stand-in for the network's mask, so the walk itself is what is tested
    def fake_predict(z, prompt=None, box=None, mask_input=None, source="", **_):
        from napari_sam_med.volume.slices import SlicePrediction

        box = prompt.box if prompt is not None else box

        return SlicePrediction(
            z,
            blob[z].copy(),
            np.zeros((32, 32), np.float32),
            0.9,
            0.95,
            source,
            {"box": list(map(float, box))} if box is not None else {},
        )

    monkeypatch.setattr(seg, "predict", fake_predict)
    obj = ObjectSegmentation(
        1, key_prompts={2: {"box": [34, 14, 66, 34]}, 6: {"box": [34, 14, 66, 34]}}
    )
    run(Propagator(seg).key_slices(obj))
    zs = sorted(obj.slices)
    assert zs == [z for z in range(9) if blob[z].sum() >= 4]
    assert obj.slices[2].source == obj.slices[6].source == "box"
    assert obj.slices[4].source == "propagated"
    assert obj.stop_reasons == {"down": "empty", "up": "empty"}


def test_stop_on_area_jump(tiny_model, monkeypatch):
    vol, blob = blob_volume()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    from napari_sam_med.volume.slices import SlicePrediction

    def fake_predict(z, box=None, **kw):
        m = blob[z].copy() if z <= 5 else np.ones_like(blob[z])  # leaks into everything at z=6
        return SlicePrediction(z, m, np.zeros((32, 32), np.float32), 0.9, 0.95, "x", {})

    monkeypatch.setattr(seg, "predict", fake_predict)
    obj = ObjectSegmentation(1, key_prompts={4: {"box": [34, 14, 66, 34]}})
    run(Propagator(seg, PropagationSettings()).key_slices(obj))
    assert obj.stop_reasons["up"] == "area_jump" and 6 not in obj.slices


def test_multiple_objects_never_overwrite():
    from napari_sam_med.volume.slices import SlicePrediction

    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2, :] = True
    b[1:3, :] = True
    oa = ObjectSegmentation(1, slices={0: SlicePrediction(0, a, None, 1, 1, "box")})
    ob = ObjectSegmentation(2, slices={0: SlicePrediction(0, b, None, 1, 1, "box")})
    labels = compose_labels([oa, ob], (1, 4, 4))
    assert (labels[0, :2] == 1).all() and (labels[0, 2] == 2).all()
    over = compose_labels([oa, ob], (1, 4, 4), overwrite=True)
    assert (over[0, 1] == 2).all()
    with pytest.raises(ValueError, match="label must be >= 1"):
        ObjectSegmentation(0)


@pytest.mark.parametrize(
    "box, match",
    [
        ([1, 2, 3], "box3d must be"),
        ([10, 10, 5, 5, 5, 8], "max corner"),
        ([0, 0, 0, 90, 10, 3], "outside the volume"),
        ([0, 0, 0, np.nan, 10, 3], "box3d must be"),
    ],
)
def test_bad_box3d(tiny_model, box, match):
    seg = SliceSegmenter(tiny_model, blob_volume()[0], "minmax")
    with pytest.raises(ValueError, match=match):
        run(Propagator(seg).box3d(ObjectSegmentation(1), box))


def test_nan_volume_is_refused(tiny_model):
    vol = blob_volume()[0]
    vol[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        SliceSegmenter(tiny_model, vol, "minmax")


def test_clicks_as_box_edits():
    from napari_sam_med.volume.propagate import _edit_box

    box = np.array([10, 10, 50, 40], np.float32)
    grown = _edit_box(box, np.array([[60.0, 20.0]]), np.array([1]), margin=2)
    np.testing.assert_allclose(grown, [10, 10, 62, 40])
    # a negative click near the right edge moves that edge past the click
    cut = _edit_box(box, np.array([[45.0, 25.0]]), np.array([0]), margin=2)
    np.testing.assert_allclose(cut, [10, 10, 44, 40])
    # clicks that agree with the box change nothing
    same = _edit_box(box, np.array([[30.0, 20.0], [70.0, 70.0]]), np.array([1, 0]), margin=2)
    np.testing.assert_allclose(same, box)


def test_correction_of_a_box3d_object_stays_in_its_box(tiny_model, monkeypatch):
    vol, blob = blob_volume()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    from napari_sam_med.volume.slices import SlicePrediction

    def fake_predict(z, box=None, **kw):
        return SlicePrediction(
            z,
            np.ones_like(blob[z]),
            np.zeros((32, 32), np.float32),
            0.9,
            0.95,
            kw.get("source", ""),
            {},
        )

    monkeypatch.setattr(seg, "predict", fake_predict)
    obj = ObjectSegmentation(1)
    prop = Propagator(seg)
    run(prop.box3d(obj, [34, 14, 3, 66, 34, 5]))
    run(prop.correct(obj, 3, points=np.array([[40.0, 20.0]]), labels=np.array([1])))
    assert sorted(obj.slices) == [3, 4, 5]
    for p in obj.slices.values():
        ys, xs = np.nonzero(p.mask)
        assert xs.min() >= 34 and xs.max() <= 66 and ys.min() >= 14 and ys.max() <= 34


def test_auto_click_mode_follows_click_training(tiny_model):
    """LiteMedSAM as published gets box edits; a click-trained fine-tune of it gets points."""
    import copy
    from dataclasses import replace

    from napari_sam_med.capabilities import trained_with_clicks

    model = copy.deepcopy(tiny_model)
    model.config = replace(model.config, name="lite_medsam")
    model.checkpoint_metadata = {}
    prop = Propagator(SliceSegmenter(model, np.zeros((3, 32, 32), np.float32)))
    assert not trained_with_clicks(model) and prop._clicks_edit_box()
    model.checkpoint_metadata = {"training": {"step": 30, "click_trained": True}}
    assert trained_with_clicks(model) and not prop._clicks_edit_box()
    model.checkpoint_metadata = {"training": {"step": 30}}  # older runs: clicks were trained
    assert not prop._clicks_edit_box()
    model.checkpoint_metadata = {"training": {"click_trained": False}}
    assert prop._clicks_edit_box()
    prop.settings = PropagationSettings(click_mode="points")
    assert not prop._clicks_edit_box()


def test_corrections_follow_the_recorded_capabilities(tiny_model, monkeypatch):
    """A checkpoint trained with the 3D-loop simulation gets real points and its previous
    logits as the mask prompt; LiteMedSAM as published gets box edits and no mask prompt."""
    import copy
    from dataclasses import replace

    from napari_sam_med.capabilities import model_capabilities

    model = copy.deepcopy(tiny_model)
    model.config = replace(model.config, name="lite_medsam")
    vol, _blob = blob_volume()
    seg = SliceSegmenter(model, vol, "minmax")
    calls = []
    real = seg.predict

    def spy(z, prompt=None, **kw):
        points = prompt.arrays()[1] if prompt is not None else kw.get("points")
        calls.append({**kw, "points": points})
        return real(z, prompt, **kw)

    monkeypatch.setattr(seg, "predict", spy)
    for meta, points, mask_prompt in (
        ({}, False, False),
        ({"training": {"capabilities": {"clicks": True, "propagation": True}}}, True, True),
        ({"training": {"click_trained": True}}, True, False),
    ):
        model.checkpoint_metadata = meta
        obj = ObjectSegmentation(1)
        prop = Propagator(seg)
        run(prop.box3d(obj, [34, 14, 2, 66, 34, 6]))
        calls.clear()
        run(prop.correct(obj, 4, points=np.array([[50.0, 24.0]]), labels=np.array([0])))
        first = calls[0]
        assert (first["points"] is not None) == points, meta
        assert (first["mask_input"] is not None) == mask_prompt, meta
    caps = model_capabilities(model)
    assert caps.clicks and not caps.propagation


def test_correction_keeps_the_neighbours_extent_for_click_trained_models(tiny_model, monkeypatch):
    """A click-trained model: the corrected slice's box takes in a positive click outside it;
    with the ``keep`` rule re-propagation gives each neighbour a box that still holds its own
    earlier extent, with its earlier logits as the mask prompt (so a correction at the
    object's end does not cut the slices beside it down to the end's size). Models without
    calibrated rules keep the old one."""
    import copy

    model = copy.deepcopy(tiny_model)
    model.checkpoint_metadata = {
        "training": {"capabilities": {"clicks": True}},
        "engine": {"repropagate": "keep"},
    }
    vol, _blob = blob_volume()
    seg = SliceSegmenter(model, vol, "minmax")
    calls = []
    real = seg.predict

    def spy(z, prompt=None, **kw):
        seen = kw if prompt is None else {**kw, "box": prompt.box, "points": prompt.points}
        calls.append((z, seen))  # a key slice comes as a SlicePrompt, a propagated one as box=
        return real(z, prompt, **kw)

    monkeypatch.setattr(seg, "predict", spy)
    prop = Propagator(seg, PropagationSettings(change_tol=1.1, min_area=0))
    obj = ObjectSegmentation(1)
    run(prop.box3d(obj, [34, 14, 2, 66, 34, 6]))
    old = {z: obj.slices[z] for z in (3, 5) if z in obj.slices and obj.slices[z].area}
    calls.clear()
    run(prop.correct(obj, 4, points=np.array([[70.0, 24.0]]), labels=np.array([1])))
    z0, first = calls[0]
    assert z0 == 4 and first["box"][2] >= 70.0  # the box now holds the positive click
    assert first["mask_input"] is not None and first["points"] is not None
    for z, kw in calls[1:]:
        if z in old:
            ys, xs = np.nonzero(old[z].mask)
            assert kw["box"][0] <= xs.min() and kw["box"][2] >= xs.max(), z
            np.testing.assert_array_equal(kw["mask_input"][0], old[z].logits)
    assert prop._repropagate_mode() == "keep"
    model.checkpoint_metadata = {}
    model.config = __import__("dataclasses").replace(model.config, name="lite_medsam")
    assert prop._repropagate_mode() == "box"
    prop.settings = PropagationSettings(repropagate="sideways")
    with pytest.raises(ValueError, match="repropagate='sideways'"):
        prop._repropagate_mode()


def test_engine_rules_follow_the_model_unless_set(tiny_model):
    """Propagation without a z-range stops on the thresholds calibrated for the model (its
    checkpoint's ``engine`` metadata), 0.5/0.5 for models without them; settings win."""
    import copy

    model = copy.deepcopy(tiny_model)
    model.checkpoint_metadata = {}
    prop = Propagator(SliceSegmenter(model, np.zeros((3, 32, 32), np.float32)))
    assert prop.thresholds() == (0.5, 0.5)
    model.checkpoint_metadata = {"engine": {"min_iou": 0.3, "min_stability": 0.0}}
    assert prop.thresholds() == (0.3, 0.0)
    model.checkpoint_metadata = {"engine": {"min_iou": "high", "repropagate": "x"}}
    assert prop.thresholds() == (0.5, 0.5)  # malformed: the defaults
    assert prop._repropagate_mode() == "box"
    model.checkpoint_metadata = {"engine": {"repropagate": "union"}}
    assert prop._repropagate_mode() == "union"
    prop.settings = PropagationSettings(min_iou=0.7)
    assert prop.thresholds() == (0.7, 0.5)


def test_qc_flags_follow_the_models_qc_limits(tiny_model):
    """The QC trace flags a slice below its model's QC limits (the checkpoint's ``engine``
    metadata), LiteMedSAM's 0.75/0.85 for models without them; a slice whose model is unknown
    (painted, read back) keeps those too."""
    import copy

    from napari_sam_med.volume.objects import ObjectSegmentation
    from napari_sam_med.volume.slices import QC_LIMITS, SlicePrediction

    model = copy.deepcopy(tiny_model)
    seg = SliceSegmenter(model, np.zeros((3, 32, 32), np.float32))
    box = np.array([4, 4, 20, 20], np.float32)
    model.checkpoint_metadata = {}
    plain = seg.predict(1, box=box)
    assert plain.qc_limits == QC_LIMITS == (0.75, 0.85)
    # a random tiny model's IoU head may answer below 0: a limit far below anything it says
    model.checkpoint_metadata = {"engine": {"qc_min_iou": -100.0, "qc_min_stability": 0.0}}
    lenient = seg.predict(1, box=box)
    assert lenient.qc_limits == (-100.0, 0.0) and not lenient.weak
    model.checkpoint_metadata = {"engine": {"qc_min_iou": 2.0, "qc_min_stability": 0.0}}
    strict = seg.predict(1, box=box)
    assert strict.weak  # no predicted IoU reaches 2
    obj = ObjectSegmentation(1)
    obj.slices = {0: lenient, 1: strict}
    assert obj.flagged_slices() == [1]
    mask, logits = np.ones((32, 32), bool), np.zeros((1, 1), np.float32)
    painted = SlicePrediction(2, mask, logits, 0.8, 0.8, "painted")
    assert painted.qc_limits == QC_LIMITS and painted.weak  # stability 0.8 < 0.85
