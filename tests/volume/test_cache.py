"""Embedding cache: lazy, keyed, reused from disk, corrupt entries recomputed, memory capped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_med.volume.cache import EmbeddingCache, array_hash, default_cache_dir
from napari_sam_med.volume.slices import SliceSegmenter


@pytest.fixture()
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(40, 30, size=(6, 40, 56)).astype(np.float32)


def test_lazy_and_reused_from_disk(tiny_model, volume, tmp_path):
    seg = SliceSegmenter(tiny_model, volume, "ct_soft_tissue", EmbeddingCache(tmp_path))
    seg.predict(2, box=np.array([5, 5, 30, 30]))
    assert seg.encoder_calls == 1  # only the slice that was needed
    files = sorted(tmp_path.rglob("slice_*.npz"))
    assert [f.name for f in files] == ["slice_00002.npz"]
    emb1, _ = seg.embedding(2)

    reopened = SliceSegmenter(tiny_model, volume.copy(), "ct_soft_tissue", EmbeddingCache(tmp_path))
    emb2, _ = reopened.embedding(2)
    assert reopened.encoder_calls == 0
    assert reopened.cache.disk_hits == 1
    # the run that computed it used what later runs read back: a cold and a warm cache answer
    # alike (same masks, same stop decisions)
    assert torch.equal(emb1, emb2)
    a = seg.predict(2, box=np.array([5, 5, 30, 30]))
    b = reopened.predict(2, box=np.array([5, 5, 30, 30]))
    assert np.array_equal(a.mask, b.mask) and a.iou == b.iou


def test_key_changes_with_preset_axis_and_content(tiny_model, volume, tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = {
        SliceSegmenter(tiny_model, volume, "ct_soft_tissue", cache).cache_key,
        SliceSegmenter(tiny_model, volume, "ct_lung", cache).cache_key,
        SliceSegmenter(tiny_model, volume, "ct_soft_tissue", cache, axis=1).cache_key,
        SliceSegmenter(tiny_model, volume + 1, "ct_soft_tissue", cache).cache_key,
    }
    assert len(keys) == 4
    assert array_hash(volume) != array_hash(volume.astype(np.float64))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_corrupt_entry_is_recomputed(tiny_model, volume, tmp_path, damage):
    seg = SliceSegmenter(tiny_model, volume, "ct_soft_tissue", EmbeddingCache(tmp_path))
    good, _ = seg.embedding(1)
    (path,) = tmp_path.rglob("slice_00001.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, embedding=np.zeros((1, 2, 3), np.float16))
    fresh = SliceSegmenter(tiny_model, volume, "ct_soft_tissue", EmbeddingCache(tmp_path))
    emb, _ = fresh.embedding(1)
    assert fresh.encoder_calls == 1 and fresh.cache.rejected == 1
    torch.testing.assert_close(emb, good)
    # the recomputed entry replaced the bad one and is trusted next time
    again = SliceSegmenter(tiny_model, volume, "ct_soft_tissue", EmbeddingCache(tmp_path))
    again.embedding(1)
    assert again.encoder_calls == 0


def test_memory_cap_evicts_oldest(tiny_model, volume):
    seg = SliceSegmenter(tiny_model, volume, "ct_soft_tissue", EmbeddingCache(None))
    emb, _ = seg.embedding(0)
    one = emb.numel() * emb.element_size()
    seg.cache.memory_bytes = 2 * one
    for z in (1, 2, 3):
        seg.embedding(z)
    assert not seg.is_cached(0) and not seg.is_cached(1)
    assert seg.is_cached(2) and seg.is_cached(3)


def test_precompute_yields_progress_and_can_stop(tiny_model, volume):
    seg = SliceSegmenter(tiny_model, volume, "ct_soft_tissue")
    gen = seg.precompute()
    first = [next(gen) for _ in range(2)]
    gen.close()  # the user cancelled
    assert first == [(1, 6, 0), (2, 6, 1)]
    assert seg.encoder_calls == 2
    assert list(seg.precompute([0, 1])) == [(1, 2, 0), (2, 2, 1)]
    assert seg.encoder_calls == 2  # already cached


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_MED_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NAPARI_SAM_MED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "napari-sam-med"


def test_models_sharing_an_encoder_share_embeddings(volume, tmp_path):
    """A checkpoint that changes only the decoder (a frozen-encoder fine-tune) reuses the
    embeddings of its base model, from memory and from disk; a changed encoder weight, another
    normalisation or another architecture does not."""
    from napari_sam_med.build import build_sam, save_checkpoint
    from napari_sam_med.volume.cache import encoder_weights_id

    torch.manual_seed(0)
    base = build_sam("tiny", device="cpu")
    tuned = build_sam("tiny", device="cpu")
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.mask_decoder.parameters():
            p.add_(0.1)
    path = save_checkpoint(tuned, tmp_path / "tuned.pt")
    from_file = build_sam(str(path), device="cpu")
    assert encoder_weights_id(base) == encoder_weights_id(tuned) == encoder_weights_id(from_file)

    cache = EmbeddingCache(tmp_path / "cache")
    first = SliceSegmenter(base, volume, "ct_soft_tissue", cache)
    first.predict(3, box=np.array([5, 5, 30, 30]))
    second = SliceSegmenter(from_file, volume, "ct_soft_tissue", cache)
    assert second.cache_key == first.cache_key
    second.predict(3, box=np.array([5, 5, 30, 30]))
    assert (first.encoder_calls, second.encoder_calls) == (1, 0)
    cold = SliceSegmenter(from_file, volume, "ct_soft_tissue", EmbeddingCache(tmp_path / "cache"))
    cold.embedding(3)
    assert cold.encoder_calls == 0 and cold.cache.disk_hits == 1

    other = build_sam("tiny", device="cpu")
    other.load_state_dict(base.state_dict())
    with torch.no_grad():
        next(other.image_encoder.parameters()).add_(1e-3)
    assert encoder_weights_id(other) != encoder_weights_id(base)
    minmax = build_sam("tiny", device="cpu", preprocessing="sam")
    minmax.load_state_dict(base.state_dict())  # same weights, SAM mean/std input
    assert minmax.config.normalization != base.config.normalization
    assert encoder_weights_id(minmax) != encoder_weights_id(base)
