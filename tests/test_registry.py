"""Every registered architecture builds, runs forward and backward (random weights).

The sizes come from ``napari_sam_med.config.REGISTRY``, never retyped here. ``tiny`` and
``lite_medsam`` run at their registered size (cheap on a CPU). The SAM ViTs (``vit_b``,
``vit_l``, ``vit_h``, ``medsam_vit_b``) run as a small twin of their registry entry: the same
encoder, patch size, window size, attention heads, MLP ratio, normalisation, decoder heads and
number of ambiguity masks, with the input cut to one attention window, two blocks (the second
global, as every registered ViT ends in a global block) and 16 channels per head, so a
vit_h-sized model (632M parameters) is not trained on a 2-core CPU here. Their full-size
parameters are checked key by key and shape by shape against the public checkpoints in
``tests/test_spec_keys.py``, also from the registry.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from napari_sam_med.build import build_model
from napari_sam_med.config import REGISTRY, SamConfig
from napari_sam_med.modeling import Sam

FULL_SIZE = ("tiny", "lite_medsam")


def small_twin(config: SamConfig) -> SamConfig:
    """``config`` at a size a CPU test affords (see the module docstring); unchanged for the
    entries that are small already."""
    if config.name in FULL_SIZE or config.encoder == "tiny_vit":  # LiteMedSAM and its fine-tunes
        return config
    vit = config.vit
    assert vit.global_attn_indexes[-1] == vit.depth - 1  # the pattern the twin keeps
    width = 16 * vit.num_heads
    vit = replace(vit, embed_dim=width, depth=2, global_attn_indexes=(1,))
    embed = 8 * config.decoder_num_heads
    return replace(
        config, vit=vit, img_size=vit.patch_size * vit.window_size,
        image_embedding_size=vit.window_size, embed_dim=embed, iou_head_hidden_dim=embed,
        decoder_mlp_dim=2 * embed, mask_in_chans=4,
    )  # fmt: skip


def _prompts(config: SamConfig) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    s = float(config.img_size)
    return {
        "points": (torch.tensor([[[0.3 * s, 0.4 * s], [0.6 * s, 0.5 * s]]]),
                   torch.tensor([[1, 0]])),  # fmt: skip
        "boxes": torch.tensor([[0.2 * s, 0.25 * s, 0.7 * s, 0.8 * s]]),
        "masks": torch.randn(1, 1, config.mask_input_size, config.mask_input_size),
    }


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registered_architecture_runs_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    config = small_twin(REGISTRY[name])
    model = build_model(config).train()
    assert isinstance(model, Sam) and model.config == config
    x = torch.randn(1, 3, config.img_size, config.img_size)
    low, iou = model(x, multimask_output=True, **_prompts(config))
    k, m = config.num_multimask_outputs, config.mask_input_size
    assert low.shape == (1, k, m, m) and iou.shape == (1, k)
    assert torch.isfinite(low).all() and torch.isfinite(iou).all()
    (low.square().mean() + iou.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # unused here: the "no mask" embedding (a mask prompt is given) and, with multimask
    # output, the single-mask output token's decoder rows; every other parameter learns
    unused = [n for n in no_grad if n != "prompt_encoder.no_mask_embed.weight"]
    assert all(n.startswith("mask_decoder.") for n in unused), unused
    grads = [p.grad for p in model.image_encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_small_twin_keeps_what_makes_the_entry(name: str) -> None:
    full, twin = REGISTRY[name], small_twin(REGISTRY[name])
    same = ("encoder", "normalization", "num_multimask_outputs", "decoder_num_heads",
            "pixel_mean", "pixel_std", "text_dim")  # fmt: skip
    assert all(getattr(full, f) == getattr(twin, f) for f in same)
    if full.encoder == "vit":
        for f in ("num_heads", "patch_size", "window_size", "mlp_ratio"):
            assert getattr(full.vit, f) == getattr(twin.vit, f)
    assert twin.img_size == twin.image_embedding_size * (
        twin.vit.patch_size if twin.encoder == "vit" else full.img_size // full.image_embedding_size
    )
