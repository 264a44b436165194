"""Tests for napari_sam_med.modeling: shapes, gradients, errors and reference fidelity.

The fidelity fixture ``fixtures/sam_small_goldens.pt`` was produced once with the reference
``segment_anything`` by ``benchmarks/reference/make_sam_goldens.py``. The fused decoder
against these plain modules: ``test_fused_decoder.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_sam_med.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from napari_sam_med.modeling.image_encoder import (
    Attention,
    decomposed_rel_pos_bias,
    window_partition,
    window_unpartition,
)

GOLDENS = Path(__file__).parent / "fixtures" / "sam_small_goldens.pt"
RTOL, ATOL = 1e-4, 1e-5

TINY = {
    "encoder": dict(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        out_chans=32,
        window_size=3,
        global_attn_indexes=(1,),
    ),
    "prompt": dict(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64)),
    "transformer": dict(depth=2, embedding_dim=32, num_heads=2, mlp_dim=64),
    "decoder": dict(transformer_dim=32, iou_head_hidden_dim=32),
}


def build_sam(config: dict) -> Sam:
    """Assemble our Sam from a config dict shaped like the golden fixture's."""
    decoder = MaskDecoder(
        transformer=TwoWayTransformer(**config["transformer"]), **config["decoder"]
    )
    return Sam(ImageEncoderViT(**config["encoder"]), PromptEncoder(**config["prompt"]), decoder)


@pytest.fixture(scope="module")
def goldens() -> dict:
    if not GOLDENS.exists():
        pytest.skip(f"golden fixture missing: {GOLDENS}")
    return torch.load(GOLDENS, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def golden_sam(goldens: dict) -> Sam:
    sam = build_sam(goldens["config"]).eval()
    sam.load_state_dict(goldens["state_dict"], strict=True)
    return sam


@pytest.fixture
def tiny_sam() -> Sam:
    torch.manual_seed(0)
    return build_sam(TINY)


def _points(batch: int, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.rand(batch, n, 2) * size
    labels = torch.randint(0, 2, (batch, n))
    return coords, labels


# ---------------------------------------------------------------- fidelity against reference


def test_golden_state_dict_loads_strict(goldens: dict, golden_sam: Sam) -> None:
    ours = golden_sam.state_dict()
    assert set(ours) == set(goldens["state_dict"])


def test_golden_image_encoder(goldens: dict, golden_sam: Sam) -> None:
    with torch.no_grad():
        embeddings = golden_sam.encode_image(goldens["images"])
    torch.testing.assert_close(embeddings, goldens["embeddings"], rtol=RTOL, atol=ATOL)


def test_golden_dense_pe(goldens: dict, golden_sam: Sam) -> None:
    pe = golden_sam.prompt_encoder.get_dense_pe()
    torch.testing.assert_close(pe, goldens["dense_pe"], rtol=RTOL, atol=ATOL)


CASES = [
    "points_multi",
    "points_single",
    "box_only",
    "box_multi",
    "points_box",
    "points_mask",
    "mask_only",
    "paired_points",
]


@pytest.mark.parametrize("case", CASES)
def test_golden_prompt_and_decoder(goldens: dict, golden_sam: Sam, case: str) -> None:
    prompt, expected = goldens["prompts"][case], goldens["outputs"][case]
    embeddings = goldens["embeddings"]
    if case != "paired_points":
        embeddings = embeddings[:1]  # one image shared by the prompt batch
    with torch.no_grad():
        sparse, dense = golden_sam.prompt_encoder(
            prompt["points"], prompt["boxes"], prompt["masks"]
        )
        masks, iou = golden_sam.decode(
            embeddings, prompt["points"], prompt["boxes"], prompt["masks"], prompt["multimask"]
        )
    torch.testing.assert_close(sparse, expected["sparse"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dense, expected["dense"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(masks, expected["masks"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(iou, expected["iou"], rtol=RTOL, atol=ATOL)
    n_out = 3 if prompt["multimask"] else 1
    assert masks.shape[1] == n_out and iou.shape[1] == n_out


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("multimask, n_out", [(True, 3), (False, 1)])
def test_decode_shapes_broadcast_one_image(tiny_sam: Sam, multimask: bool, n_out: int) -> None:
    embeddings = tiny_sam.encode_image(torch.randn(1, 3, 64, 64))
    assert embeddings.shape == (1, 32, 4, 4)
    masks, iou = tiny_sam.decode(embeddings, points=_points(5, 2), multimask_output=multimask)
    assert masks.shape == (5, n_out, 16, 16)
    assert iou.shape == (5, n_out)


def test_decode_paired_batch_matches_individual(tiny_sam: Sam) -> None:
    tiny_sam.eval()
    embeddings = torch.randn(3, 32, 4, 4)
    points = _points(3, 2)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 60.0, 20.0], [0.0, 0.0, 63.0, 63.0]])
    with torch.no_grad():
        masks, iou = tiny_sam.decode(embeddings, points=points, boxes=boxes)
        for i in range(3):
            m_i, iou_i = tiny_sam.decode(
                embeddings[i : i + 1],
                points=(points[0][i : i + 1], points[1][i : i + 1]),
                boxes=boxes[i : i + 1],
            )
            torch.testing.assert_close(masks[i : i + 1], m_i, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(iou[i : i + 1], iou_i, rtol=RTOL, atol=ATOL)


def test_sparse_token_counts(tiny_sam: Sam) -> None:
    pe = tiny_sam.prompt_encoder
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    assert pe(points=_points(1, 3))[0].shape == (1, 4, 32)  # + one padding token
    assert pe(points=_points(1, 3), boxes=boxes)[0].shape == (1, 5, 32)
    assert pe(boxes=boxes)[0].shape == (1, 2, 32)
    assert pe(boxes=boxes[:, None, :])[0].shape == (1, 2, 32)  # LiteMedSAM's Bx1x4
    sparse, dense = pe()
    assert sparse.shape == (1, 0, 32) and dense.shape == (1, 32, 4, 4)


def test_box_corner_labels_match_box_prompt(tiny_sam: Sam) -> None:
    pe = tiny_sam.prompt_encoder
    box = torch.tensor([[3.0, 7.0, 50.0, 41.0]])
    as_points = (box.view(1, 2, 2), torch.tensor([[2, 3]]))
    point_tokens = pe(points=as_points)[0][:, :2]  # drop the padding token
    torch.testing.assert_close(point_tokens, pe(boxes=box)[0])


def test_encoder_other_input_size_resamples_positions() -> None:
    encoder = ImageEncoderViT(**TINY["encoder"])
    assert encoder(torch.randn(1, 3, 96, 96)).shape == (1, 32, 6, 6)


def test_window_partition_roundtrip_with_padding() -> None:
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 3, 3, 3) and padded == (6, 9)
    torch.testing.assert_close(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_text_dim_reserved() -> None:
    args = TINY["prompt"]
    plain = PromptEncoder(**args)
    assert not any("text" in k for k in plain.state_dict())
    with_text = PromptEncoder(**args, text_dim=8)
    assert with_text.text_proj.weight.shape == (32, 8)


def test_sam_has_no_normalisation_buffers(tiny_sam: Sam) -> None:
    assert not any("pixel" in k for k in tiny_sam.state_dict())


# ---------------------------------------------------------------- training


def test_forward_backward_no_nan(tiny_sam: Sam) -> None:
    tiny_sam.train()
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 60.0, 20.0]])
    mask_in = torch.randn(2, 1, 16, 16)
    masks, iou = tiny_sam(images, points=_points(2, 2), boxes=boxes, masks=mask_in)
    assert torch.isfinite(masks).all() and torch.isfinite(iou).all()
    (masks.mean() + iou.mean()).backward()
    no_grad = [n for n, p in tiny_sam.named_parameters() if p.grad is None]
    # With a mask prompt the no-mask token is unused; everything else must get a gradient.
    assert set(no_grad) <= {"prompt_encoder.no_mask_embed.weight"}, no_grad
    for name, p in tiny_sam.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_rel_pos_attention_gradients_match_explicit_softmax() -> None:
    """SDPA with the rel-pos bias as a float mask must give the same values and gradients."""
    torch.manual_seed(0)
    attn = Attention(32, 4, input_size=(5, 5))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, 5, 5, 32, requires_grad=True)

    def explicit(x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        q, k, v = attn.qkv(x).reshape(b, h * w, 3, 4, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * 8**-0.5) @ k.transpose(-1, -2)
        logits = logits + decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        out = logits.softmax(-1) @ v
        return attn.proj(out.transpose(1, 2).reshape(b, h, w, d))

    wrt = [x, attn.rel_pos_h, attn.rel_pos_w, attn.qkv.weight]
    grads = torch.autograd.grad(attn(x).square().sum(), wrt)
    expected = torch.autograd.grad(explicit(x).square().sum(), wrt)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- errors


def test_invalid_point_label_raises(tiny_sam: Sam) -> None:
    with pytest.raises(ValueError, match="labels"):
        tiny_sam.prompt_encoder(points=(torch.zeros(1, 1, 2), torch.tensor([[4]])))


def test_point_shape_mismatch_raises(tiny_sam: Sam) -> None:
    with pytest.raises(ValueError, match="BxNx2"):
        tiny_sam.prompt_encoder(points=(torch.zeros(1, 2, 2), torch.tensor([[1]])))


def test_mask_shape_raises(tiny_sam: Sam) -> None:
    with pytest.raises(ValueError, match="16x16"):
        tiny_sam.prompt_encoder(masks=torch.zeros(1, 1, 32, 32))


def test_prompt_batch_mismatch_raises(tiny_sam: Sam) -> None:
    with pytest.raises(ValueError, match="batch"):
        tiny_sam.prompt_encoder(points=_points(2, 1), boxes=torch.zeros(3, 4))


def test_image_batch_mismatch_raises(tiny_sam: Sam) -> None:
    with pytest.raises(ValueError, match="image_embeddings"):
        tiny_sam.decode(torch.randn(2, 32, 4, 4), points=_points(3, 1))


def test_encoder_channel_mismatch_raises(tiny_sam: Sam) -> None:
    with pytest.raises(ValueError, match="Bx3xHxW"):
        tiny_sam.encode_image(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=60, patch_size=16), "multiple"),
        (dict(depth=2, global_attn_indexes=(2,)), "global_attn_indexes"),
        (dict(embed_dim=30, num_heads=4), "num_heads"),
    ],
)
def test_encoder_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageEncoderViT(**{**TINY["encoder"], **kwargs})


def _embedding_shape(sam: Sam) -> tuple[int, int, int]:
    pe = sam.prompt_encoder
    return (pe.embed_dim, *pe.image_embedding_size)


def test_dense_pe_is_cached_and_usable_for_training(tiny_sam: Sam) -> None:
    """get_dense_pe is computed once; its cache made under inference_mode still trains."""
    pe_module = tiny_sam.prompt_encoder
    with torch.inference_mode():
        first = pe_module.get_dense_pe()
    assert not first.is_inference()
    assert pe_module.get_dense_pe() is first
    tiny_sam.train()
    emb = torch.randn((1, *_embedding_shape(tiny_sam)))
    masks, iou = tiny_sam.decode(emb, boxes=torch.tensor([[4.0, 6.0, 40.0, 50.0]]))
    (masks.mean() + iou.mean()).backward()
    assert tiny_sam.mask_decoder.iou_token.weight.grad is not None
    pe_module.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    assert not torch.equal(pe_module.get_dense_pe(), first)
