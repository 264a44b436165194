"""Text prompts in the prompt encoder: one extra sparse token, only when ``text_dim`` is set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from napari_sam_med.build import build_model, build_sam, save_checkpoint
from napari_sam_med.config import REGISTRY, SamConfig

TEXT_DIM = 12


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    return build_model(replace(REGISTRY["tiny"], text_dim=TEXT_DIM))


def test_no_text_keeps_keys_and_refuses_text() -> None:
    model = build_model(REGISTRY["tiny"])
    assert not [k for k in model.state_dict() if "text" in k]
    with pytest.raises(ValueError, match="no text-prompt support"):
        model.prompt_encoder(text=torch.zeros(1, TEXT_DIM))
    with pytest.raises(ValueError, match="text_dim=0"):
        SamConfig(name="bad", text_dim=0)


def test_text_token_values_and_order(text_model) -> None:
    pe = text_model.prompt_encoder
    keys = sorted(k for k in text_model.state_dict() if "text" in k)
    assert keys == [
        "prompt_encoder.text_embed.weight",
        "prompt_encoder.text_proj.bias",
        "prompt_encoder.text_proj.weight",
    ]
    text = torch.randn(2, TEXT_DIM)
    expected = text @ pe.text_proj.weight.T + pe.text_proj.bias + pe.text_embed.weight[0]
    sparse, dense = pe(text=text)
    assert sparse.shape == (2, 1, pe.embed_dim) and dense.shape[0] == 2
    torch.testing.assert_close(sparse[:, 0], expected)
    boxes = torch.tensor([[4.0, 5.0, 30.0, 40.0], [1.0, 1.0, 9.0, 9.0]])
    with_box, _ = pe(boxes=boxes, text=text)
    box_only, _ = pe(boxes=boxes)
    assert with_box.shape == (2, 3, pe.embed_dim)
    torch.testing.assert_close(with_box[:, :2], box_only)  # box tokens unchanged, text last
    torch.testing.assert_close(with_box[:, 2], expected)
    pts = (torch.tensor([[[10.0, 12.0]]]), torch.tensor([[1]]))
    assert pe(points=pts, text=text[:1])[0].shape == (1, 3, pe.embed_dim)  # point, pad, text
    assert pe(text=text[0])[0].shape == (1, 1, pe.embed_dim)  # a single (T,) vector
    with pytest.raises(ValueError, match=f"Bx{TEXT_DIM}"):
        pe(text=torch.zeros(1, TEXT_DIM + 1))
    with pytest.raises(ValueError, match="text batch 2 does not match"):
        pe(boxes=boxes[:1], text=text)


def test_text_prompt_decodes_and_trains(text_model) -> None:
    cfg = text_model.config
    emb = torch.randn(1, cfg.embed_dim, cfg.image_embedding_size, cfg.image_embedding_size)
    text = torch.randn(1, TEXT_DIM)
    sparse, dense = text_model.prompt_encoder(text=text)
    logits, iou = text_model.mask_decoder(
        image_embeddings=emb,
        image_pe=text_model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    assert logits.shape == (1, 1, cfg.mask_input_size, cfg.mask_input_size)
    assert torch.isfinite(logits).all()
    logits.mean().backward()
    grad = text_model.prompt_encoder.text_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    other, _ = text_model.mask_decoder(
        image_embeddings=emb,
        image_pe=text_model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=text_model.prompt_encoder(text=-text)[0],
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    assert not torch.allclose(other, logits)  # the text changes the mask


def test_text_checkpoint_round_trip(text_model, tmp_path: Path) -> None:
    path = save_checkpoint(text_model, tmp_path / "text.pt")
    loaded = build_sam(str(path), device="cpu")
    assert loaded.config.text_dim == TEXT_DIM
    torch.testing.assert_close(
        loaded.prompt_encoder.text_embed.weight, text_model.prompt_encoder.text_embed.weight
    )
