"""A correction's clicks travel on to the slices beside it while those slices are wrong at the
same pixel in the same way (``PropagationSettings.carry_clicks``)."""

from __future__ import annotations

import numpy as np

from napari_sam_med.volume.carried_clicks import as_clicks, heading, still_wrong
from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.propagate import PropagationSettings, Propagator, run
from napari_sam_med.volume.slices import SliceSegmenter
from tests.volume.test_propagate import blob_volume


def test_a_click_travels_only_where_the_mask_is_wrong_the_same_way():
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:8] = True
    pts = np.array([[4.0, 3.0], [10.0, 8.0], [10.0, 8.0], [5.0, 4.0]], np.float32)
    lab = np.array([0, 0, 1, 1])
    kept, kept_lab = still_wrong(pts, lab, mask)
    # the negative click inside the mask (a leak) and the positive one outside it (a miss)
    np.testing.assert_array_equal(kept, [[4.0, 3.0], [10.0, 8.0]])
    np.testing.assert_array_equal(kept_lab, [0, 1])
    none, none_lab = still_wrong(pts, lab, None)  # no earlier result: nothing travels
    assert none.shape == (0, 2) and none_lab.shape == (0,)
    edge, _ = still_wrong(np.array([[99.0, -5.0]], np.float32), np.array([1]), mask)
    assert len(edge) == 1  # a click off the slice is read at the nearest pixel, not an error
    assert as_clicks(None, None) is None and as_clicks(np.zeros((0, 2)), None) is None
    p, lab1 = as_clicks(np.array([3, 4]), None)
    assert p.shape == (1, 2) and lab1.tolist() == [1]


def test_negative_clicks_travel_away_from_the_middle_and_positive_ones_both_ways():
    clicks = (np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([0, 1]))
    # clicked slice 8 above the middle (5): the leak goes on upwards only, the miss both ways
    up, down = heading(clicks, 8, 5.0, +1), heading(clicks, 8, 5.0, -1)
    assert up is not None and up[1].tolist() == [0, 1] and up[0].tolist() == [[1, 2], [3, 4]]
    assert down is not None and down[1].tolist() == [1] and down[0].tolist() == [[3.0, 4.0]]
    below = heading(clicks, 2, 5.0, -1)  # below the middle: downwards is outwards
    assert below is not None and below[1].tolist() == [0, 1]
    assert heading(clicks, 2, 5.0, +1)[1].tolist() == [1]
    both = [heading(clicks, 5, 5.0, s) for s in (-1, +1)]  # on the middle: negatives both ways
    assert all(h is not None and h[1].tolist() == [0, 1] for h in both)
    assert heading((clicks[0][:1], clicks[1][:1]), 8, 5.0, -1) is None  # a lone inward leak
    assert heading(None, 8, 5.0, 1) is None


def _spy(monkeypatch, seg):
    calls = []
    real = seg.predict

    def spy(z, prompt=None, **kw):
        calls.append((z, kw.get("points"), kw.get("labels")))
        return real(z, prompt, **kw)

    monkeypatch.setattr(seg, "predict", spy)
    return calls


def test_a_negative_click_follows_the_leak_to_the_slices_beside_it(tiny_model, monkeypatch):
    vol, _blob = blob_volume()
    seg = SliceSegmenter(tiny_model, vol, "minmax")
    calls = _spy(monkeypatch, seg)
    click = np.array([[50.0, 24.0]])
    for carry in (True, False):
        prop = Propagator(seg, PropagationSettings(change_tol=1.1, min_area=0, carry_clicks=carry))
        obj = ObjectSegmentation(1)
        run(prop.box3d(obj, [30, 10, 1, 70, 38, 7]))
        for z in (2, 3, 5):  # the earlier masks cover the clicked pixel on slices 2, 3 and 5...
            obj.slices[z].mask[24, 50] = True
        for z in (1, 6):  # ...not on 1 and 6 (the leak ended there)
            obj.slices[z].mask[24, 50] = False
        obj.slices[7].mask[24, 50] = True
        calls.clear()
        run(prop.correct(obj, 4, points=click, labels=np.array([0])))
        carried = {z: (p, lab) for z, p, lab in calls[1:] if p is not None}
        if not carry:
            assert carried == {}
            continue
        assert sorted(carried) == [2, 3, 5], carried  # stops at 1 and 6, not back at 7
        for p, lab in carried.values():
            np.testing.assert_array_equal(p, click)
            assert lab.tolist() == [0]


def test_carrying_follows_the_models_recorded_rule_unless_set(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    seg = SliceSegmenter(model, blob_volume()[0], "minmax")
    assert not Propagator(seg)._carry_clicks()  # no recorded rule: off, as before
    for recorded, expected in ((True, True), (False, False), ("yes", False)):  # malformed: off
        model.checkpoint_metadata = {"engine": {"carry_clicks": recorded}}
        assert Propagator(seg)._carry_clicks() is expected
    model.checkpoint_metadata = {"engine": {"carry_clicks": True}}
    assert not Propagator(seg, PropagationSettings(carry_clicks=False))._carry_clicks()
