"""Proposal generation (Qt-free): the real automatic mask generator on a slice's cached
embedding, the filters, 3D propagation and cancellation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_sam_med.plugin import _proposals
from napari_sam_med.plugin._engine import Engine


def _run(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


@pytest.fixture
def engine(tiny_model):
    rng = np.random.default_rng(1)
    img = rng.normal(0, 5, (3, 48, 48)).astype(np.float32)
    img[:, 12:30, 14:34] += 80
    return Engine(tiny_model, img, "minmax", None, {"name": "tiny"})


@pytest.fixture
def loose(monkeypatch):
    """The random tiny model predicts low IoUs: keep every mask so that the path is exercised."""
    import napari_sam_med.amg as amg

    calls = []

    def settings(name, *a, **k):
        calls.append(name)
        return {"prompt_type": "points", "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

    monkeypatch.setattr(amg, "settings_for_model", settings)
    return calls


def test_thresholds_come_from_the_shared_model_settings():
    from napari_sam_med.amg import settings_for_model

    assert settings_for_model("lite_medsam") == {
        "prompt_type": "boxes", "pred_iou_thresh": 0.8, "stability_score_thresh": 0.8}  # fmt: skip
    assert settings_for_model("vit_b")["stability_score_thresh"] == 0.95
    assert settings_for_model("vit_b", "boxes", 0.5)["pred_iou_thresh"] == 0.5


def test_proposals_use_the_cached_embedding_and_are_filtered(engine, loose):
    engine.embed(1)
    calls = engine.segmenter.encoder_calls
    labelled = np.zeros((48, 48), bool)
    settings = _proposals.ProposalSettings(points_per_side=4, max_proposals=5, min_area=4)
    steps, props = _run(_proposals.propose(engine, 1, labelled, settings))
    assert loose == ["tiny"], "thresholds come from amg.settings_for_model"
    assert engine.segmenter.encoder_calls == calls, "no second encoder pass for the slice"
    assert steps and steps[-1][1] == 1  # 16 points in one batch of 64
    assert 1 <= len(props) <= 5
    scores = [p.pred.iou * p.pred.stability for p in props]
    assert scores == sorted(scores, reverse=True)
    for p in props:
        assert p.z == 1 and 4 <= p.pred.area <= 0.5 * 48 * 48 and p.slices is None
        x0, y0, x1, y1 = p.prompt["box"]
        ys, xs = np.nonzero(p.pred.mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())
    # already annotated areas are not proposed again
    covered = props[0].pred.mask.copy()
    _, again = _run(_proposals.propose(engine, 1, covered, settings))
    assert all((p.pred.mask & covered).sum() <= 0.5 * p.pred.area for p in again)


def test_proposals_propagate_in_3d(engine, loose):
    settings = _proposals.ProposalSettings(
        points_per_side=4, max_proposals=2, min_area=4, propagate=True
    )
    steps, props = _run(_proposals.propose(engine, 1, np.zeros((48, 48), bool), settings))
    assert props and all(p.slices for p in props)
    assert any("propagating" in s[2] for s in steps)
    p = props[0]
    assert p.describe()["propagated"] and p.mask3d((3, 48, 48))[1].sum() == p.slices[1].area


def test_cancelling_stops_the_generator_thread(engine, loose):
    settings = _proposals.ProposalSettings(points_per_side=24)  # 576 points: 9 batches
    gen = _proposals.propose(engine, 0, np.zeros((48, 48), bool), settings)
    next(gen)
    gen.close()  # what Cancel does to the worker
    deadline = time.monotonic() + 60
    while any(t.name == "sam-med-proposals" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the AMG helper thread did not stop"
        time.sleep(0.05)
