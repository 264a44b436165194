"""The fused mask decoder (``modeling/_fused_decoder.py``, the fast path of
``modeling/mask_decoder.py``) against the plain modules: inference outputs, weight updates, and
the differentiable training twin's outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from napari_sam_med.modeling import Sam
from tests import test_modeling
from tests.test_modeling import ATOL, RTOL, _embedding_shape

# fixtures shared with test_modeling.py: the model checked against the reference, a tiny one
goldens, golden_sam = test_modeling.goldens, test_modeling.golden_sam
tiny_sam = test_modeling.tiny_sam


def _plain_decode(sam: Sam, emb: torch.Tensor, **prompts) -> list[torch.Tensor]:
    """``sam.decode`` through the plain modules (autograd on, fused training twin off)."""
    sam.mask_decoder.fused_training = False
    try:
        return [t.detach() for t in sam.decode(emb, **prompts)]
    finally:
        sam.mask_decoder.fused_training = True


def _decode_both(sam: Sam, emb: torch.Tensor, **prompts):
    """Plain (autograd on) and fused (inference mode) outputs of ``sam.decode``."""
    plain = _plain_decode(sam, emb, **prompts)
    with torch.inference_mode():
        fused = sam.decode(emb, **prompts)
    return plain, fused


@pytest.mark.parametrize("multimask", [True, False])
def test_fused_decoder_matches_plain(golden_sam: Sam, multimask: bool) -> None:
    sam = golden_sam.eval()
    size = sam.prompt_encoder.input_image_size[0]
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn((3, *_embedding_shape(sam)), generator=gen)
    coords = torch.rand((3, 3, 2), generator=gen) * size
    labels = torch.tensor([[1, 0, 1], [1, -1, -1], [0, 1, 1]])
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1], [0.3, 0.2, 0.31, 0.26]]) * size
    masks = 4 * torch.randn((1, 1, *sam.prompt_encoder.mask_input_size), generator=gen)
    variants = [
        dict(points=(coords, labels)),
        dict(boxes=boxes),
        dict(points=(coords, labels), boxes=boxes, masks=masks),
    ]
    n_out = 3 if multimask else 1
    for prompts in variants:
        for image in (emb[:1], emb):  # one image shared by the prompts, or one per prompt
            (pm, pi), (fm, fi) = _decode_both(sam, image, multimask_output=multimask, **prompts)
            assert fm.shape == pm.shape == (3, n_out, *sam.prompt_encoder.mask_input_size)
            torch.testing.assert_close(fm, pm, rtol=RTOL, atol=ATOL * pm.abs().max().item())
            torch.testing.assert_close(fi, pi, rtol=RTOL, atol=ATOL)


def test_fused_decoder_follows_weight_updates(tiny_sam: Sam) -> None:
    """An in-place optimiser step in eval mode must reach the fused path (no stale copy)."""
    sam = tiny_sam.eval()
    emb = torch.randn((1, *_embedding_shape(sam)))
    box = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    with torch.inference_mode():
        before = sam.decode(emb, boxes=box)[0]
    with torch.no_grad():
        sam.mask_decoder.output_hypernetworks_mlps[1].layers[-1].bias.add_(1.0)
    plain = _plain_decode(sam, emb, boxes=box)[0]
    with torch.inference_mode():
        after = sam.decode(emb, boxes=box)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("multimask", [True, False])
def test_fused_training_twin_matches_plain_outputs_and_gradients(
    golden_sam: Sam, multimask: bool
) -> None:
    """The differentiable fused decoder gives the plain decoder's outputs and gradients.

    Attention key biases are excluded: their true gradient is exactly zero (softmax ignores a
    per-query constant), so both paths only return float rounding noise there.
    """
    sam = golden_sam.train()
    gen = torch.Generator().manual_seed(5)
    size = sam.prompt_encoder.input_image_size[0]
    emb = torch.randn((2, *_embedding_shape(sam)), generator=gen)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.2, 0.7, 0.9]]) * size
    masks = 4 * torch.randn((2, 1, *sam.prompt_encoder.mask_input_size), generator=gen)
    weights = torch.randn((2, 3 if multimask else 1, *masks.shape[-2:]), generator=gen)

    def run(fused: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        sam.zero_grad(set_to_none=True)
        sam.mask_decoder.fused_training = fused
        x = emb.clone().requires_grad_(True)
        out, iou = sam.decode(x, boxes=boxes, masks=masks, multimask_output=multimask)
        ((out * weights).sum() + iou.square().sum()).backward()
        grads = {
            n: (p.grad if p.grad is not None else torch.zeros_like(p))
            for n, p in sam.named_parameters()
            if not n.endswith("k_proj.bias")
        }
        return [out.detach(), iou.detach(), x.grad], grads

    try:
        (po, pi, pg), pgrads = run(False)
        (fo, fi, fg), fgrads = run(True)
    finally:
        sam.mask_decoder.fused_training = True
        sam.eval()
    torch.testing.assert_close(fo, po, rtol=RTOL, atol=ATOL * po.abs().max().item())
    torch.testing.assert_close(fi, pi, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(fg, pg, rtol=1e-4, atol=1e-5 * pg.abs().max().item())
    for name, g in pgrads.items():
        scale = max(g.abs().max().item(), 1e-8)
        torch.testing.assert_close(fgrads[name], g, rtol=1e-4, atol=1e-4 * scale, msg=name)
