"""Weights stored as a difference to a base model, and checksummed packaged weights."""

from __future__ import annotations

import pytest
import torch

from napari_sam_med import weights
from napari_sam_med.build import CheckpointError, build_sam, save_delta_checkpoint
from napari_sam_med.weights import PackagedWeights, apply_delta, make_delta, sha256_file


def test_make_and_apply_delta_keep_only_changed_tensors():
    base = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
    tuned = {"a": torch.tensor([0.0, 0.5, 0.0]), "b": torch.ones(2, 2)}
    delta = make_delta(base, tuned, torch.float16)
    assert list(delta) == ["a"] and delta["a"].dtype == torch.float16
    back = apply_delta(base, delta, "x.pt")
    assert back["a"].dtype == torch.float32 and torch.equal(back["a"], tuned["a"])
    with pytest.raises(CheckpointError, match="x.pt.*'c' is not in the base"):
        apply_delta(base, {"c": torch.zeros(1)}, "x.pt")
    with pytest.raises(CheckpointError, match=r"shape \(4,\)"):
        apply_delta(base, {"a": torch.zeros(4)}, "x.pt")


def _lite_or_skip():
    try:
        return build_sam("lite_medsam", device="cpu", inference=False)
    except CheckpointError as err:
        pytest.skip(f"LiteMedSAM weights not installed: {err}")


def test_delta_checkpoint_round_trip_and_packaged_checksum(tmp_path, monkeypatch):
    model = _lite_or_skip()
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.layers[0].bias.add_(0.25)
    meta = {"training": {"capabilities": {"clicks": True, "propagation": True}}}
    path = save_delta_checkpoint(model, "lite_medsam", tmp_path / "d.pt", meta)
    assert path.stat().st_size < 100_000  # one small tensor, not the whole model
    again = build_sam(path, device="cpu", inference=False)
    for k, v in model.state_dict().items():
        assert torch.allclose(again.state_dict()[k], v, atol=1e-3), k
    assert again.checkpoint_metadata["training"]["capabilities"]["propagation"]
    # a packaged file is checked before it is read; a damaged one is refused by name
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setitem(
        weights.PACKAGED,
        "lite_medsam_test",
        PackagedWeights("d.pt", sha256_file(path), "lite_medsam"),
    )
    assert weights.locate_packaged("lite_medsam_test") == path
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match=r"d\.pt has SHA-256 .* expected"):
        weights.locate_packaged("lite_medsam_test")


def test_own_model_without_its_weights_is_refused_never_random(monkeypatch):
    monkeypatch.delitem(weights.PACKAGED, "sam_med_lite", raising=False)
    with pytest.raises(CheckpointError, match="ships no weights for model 'sam_med_lite'"):
        build_sam("sam_med_lite", device="cpu")
