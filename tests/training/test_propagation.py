"""Propagation-shaped training samples (training/propagation.py) and the disk embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_volume  # noqa: I001 - the local test helper

from napari_sam_med.build import build_sam
from napari_sam_med.config import get_config
from napari_sam_med.volume.datasets import find_pairs
from training.config import load_config
from training.data import load_volumes
from training.engine import EmbeddingStore, InteractiveStep, encoder_fingerprint
from training.losses import build_loss
from training.prompts import error_point, first_prompts
from training.propagation import jitter_mask, margin_box, pick_pair, target_for
from training.sampling import TrainSlices


def test_pick_pair_targets_neighbours_and_slices_past_the_ends():
    slices = list(range(5, 15))
    rng = np.random.default_rng(0)
    past, near = 0, 0
    for _ in range(400):
        zp, z = pick_pair([7, 10, 12], slices, 20, rng, max_gap=1, past_end_prob=0.3)
        assert zp in slices
        if z in (4, 15):
            past += 1
            assert zp == (5 if z == 4 else 14)
        else:
            near += 1
            assert z in (7, 10, 12) and abs(zp - z) == 1
    assert 80 < past < 170 and near > 200
    # an object on the volume's first slice: nothing lies below it
    for _ in range(50):
        zp, z = pick_pair([0], [0, 1], 2, rng, max_gap=1, past_end_prob=1.0)
        assert (zp, z) == (1, 2) or z in (0, 1)


def test_margin_box_and_jitter():
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:40] = True
    assert margin_box(mask, 3.0, mask.shape) == (7.0, 17.0, 42.0, 32.0)
    assert margin_box(mask, 30.0, mask.shape) == (0.0, 0.0, 63.0, 59.0)
    rng = np.random.default_rng(1)
    sizes = {int(jitter_mask(mask, rng, 3).sum()) for _ in range(30)}
    assert len(sizes) > 3  # grown and shrunk
    assert jitter_mask(mask, rng, 0).sum() == mask.sum()


def test_target_keeps_the_followed_object_only():
    lab = np.zeros((64, 64), np.int16)
    lab[10:20, 10:20] = 1
    lab[40:50, 40:50] = 1  # another lesion far from the prompt
    prompt = np.zeros_like(lab, bool)
    prompt[12:19, 11:18] = True
    target = target_for(lab, 1, prompt, margin_box(prompt, 3, prompt.shape))
    assert target[15, 15] and not target[45, 45]
    assert not target_for(np.zeros_like(lab), 1, prompt, (0, 0, 5, 5)).any()


def test_empty_answer_gets_a_negative_click_and_a_given_box_is_used():
    gt = np.zeros((16, 16), bool)
    assert error_point(gt, gt, None)[2] == 0
    pred = gt.copy()
    pred[3, 4] = True
    assert error_point(pred, gt, None) == (4, 3, 0)
    full = torch.zeros(2, 1, 32, 32)
    full[1, 0, 5:10, 5:10] = 1
    box = torch.tensor([[1.0, 2.0, 20.0, 21.0], [float("nan")] * 4])
    state = first_prompts(
        full, [np.random.default_rng(i) for i in range(2)], 0.0, 0.1, 5, given_box=box
    )
    assert state.box[0].tolist() == [1.0, 2.0, 20.0, 21.0]
    assert state.kind.tolist() == [0, 0]


@pytest.fixture()
def prop_dataset(tmp_path):
    from conftest import write_case

    root = tmp_path / "data"
    for i in range(2):
        write_case(root, f"P{i}", *make_volume(i, shape=(16, 48, 48)))
    return root


def test_propagation_samples_train_with_empty_targets(prop_dataset):
    over = [f"data.path={prop_dataset}", "data.propagate_prob=1.0", "data.cache=memory"]
    over += ["data.propagate_past_end_prob=0.5", "data.min_object_area=4"]
    cfg = load_config(None, over)
    vols = load_volumes(find_pairs(prop_dataset), cfg.data)
    ds = TrainSlices(vols, cfg.data, None, get_config("tiny"), seed=0)
    items = [ds[i] for i in range(24)]
    assert all(torch.isfinite(it["prompt_box"]).all() for it in items)
    empties = [it for it in items if it["mask"].sum() == 0]
    assert 0 < len(empties) < len(items)
    assert ds[5]["mask"].equal(items[5]["mask"]) and ds[5]["key"] == items[5]["key"]
    torch.manual_seed(0)
    model = build_sam("tiny", inference=False)
    step = InteractiveStep(model, build_loss(cfg.loss), cfg.sim, seed=0)
    batch = torch.utils.data.default_collate(items[:4])
    loss, stats = step(
        batch["mask"], batch["uid"], 0, images=batch["image"], prompt_box=batch["prompt_box"]
    )
    loss.backward()
    assert torch.isfinite(loss) and stats["passes"] == 11
    grads = [p.grad for p in model.mask_decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_disk_embedding_store_reuses_and_recomputes(tmp_path):
    torch.manual_seed(0)
    model = build_sam("tiny", inference=False).eval()
    images = torch.randn(2, 3, 128, 128)
    ns = encoder_fingerprint(model, "ct_soft_tissue")
    a = EmbeddingStore(directory=str(tmp_path), namespace=ns)
    first = a.embed(
        model.image_encoder, images, ["c|1", "c|2"], torch.autocast("cpu", enabled=False)
    )
    assert len(list(tmp_path.glob("*.pt"))) == 2
    b = EmbeddingStore(directory=str(tmp_path), namespace=ns)
    again = b.embed(
        model.image_encoder, images, ["c|1", "c|2"], torch.autocast("cpu", enabled=False)
    )
    assert b.misses == 0 and torch.equal(first, again)
    victim = sorted(tmp_path.glob("*.pt"))[0]
    victim.write_bytes(b"not a tensor")
    c = EmbeddingStore(directory=str(tmp_path), namespace=ns)
    third = c.embed(
        model.image_encoder, images, ["c|1", "c|2"], torch.autocast("cpu", enabled=False)
    )
    assert c.misses == 1 and torch.allclose(first, third, atol=1e-2)
    d = EmbeddingStore(directory=str(tmp_path), namespace=ns)
    d.embed(model.image_encoder, images, ["c|1", "c|2"], torch.autocast("cpu", enabled=False))
    assert d.misses == 0  # the corrupt entry was rewritten
    assert encoder_fingerprint(model, "mr") != ns


def test_embedding_namespace_changes_with_every_setting_that_changes_a_slice():
    from training.config import load_config
    from training.engine import SLICE_SHAPING, embedding_namespace

    model = build_sam("tiny", inference=False).eval()
    base = load_config(None, []).data
    seen = {embedding_namespace(model, base)}
    other = {"intensity": "mr", "path": "x.csv", "spacing": [1.0, 1.0, 2.0], "axis": "coronal",
             "orientation": "RAS"}  # fmt: skip
    assert set(other) == set(SLICE_SHAPING)
    for key, value in other.items():
        changed = load_config(None, [f"data.{key}={value}"]).data
        seen.add(embedding_namespace(model, changed))
    assert len(seen) == 1 + len(other)  # a cache filled in another orientation is not reused
