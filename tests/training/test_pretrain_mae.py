"""MAE pre-training smoke test and the transfer into SAM's ViT encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_sam_med.build import build_sam
from training.pretrain_mae import MAE, MAEConfig, main, transfer_to_sam

REPO = Path(__file__).resolve().parents[2]


def _tiny(**kw) -> MAEConfig:
    base = dict(encoder="tiny", img_size=64, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    return MAEConfig(**{**base, **kw})


def test_masking_keeps_a_quarter_and_the_loss_uses_masked_patches_only():
    torch.manual_seed(0)
    mae = MAE(_tiny())
    keep, mask = mae.random_masking(16, 3, torch.device("cpu"))
    assert keep.shape == (3, 4) and mask.sum(1).tolist() == [12.0, 12.0, 12.0]
    images = torch.rand(2, 3, 64, 64)
    loss, pred, mask = mae(images)
    assert pred.shape == (2, 16, 16 * 16 * 3) and mask.shape == (2, 16)
    # per-patch normalised target: a perfect prediction on the masked patches gives loss 0
    target = mae.patchify(images)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    masked_err = ((pred - target) ** 2).mean(-1)
    assert loss.item() == pytest.approx(((masked_err * mask).sum() / mask.sum()).item(), rel=1e-5)


def test_encoder_sees_only_visible_patches():
    mae = MAE(_tiny())
    seen = []
    mae.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    mae(torch.rand(2, 3, 64, 64))
    assert seen == [torch.Size([2, 1, 4, 32])]  # 4 of 16 patches


def test_transfer_copies_blocks_resizes_positions_and_zeroes_rel_pos():
    torch.manual_seed(0)
    mae = MAE(_tiny())
    sam = transfer_to_sam(mae, "tiny")
    enc = sam.image_encoder
    torch.testing.assert_close(enc.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(enc.patch_embed.proj.weight, mae.patch_embed.proj.weight)
    assert enc.pos_embed.shape == (1, 8, 8, 32)  # 4x4 MAE grid -> 8x8 SAM grid
    for blk in enc.blocks:
        assert blk.attn.rel_pos_h.abs().sum() == 0 and blk.attn.rel_pos_w.abs().sum() == 0
    emb = enc(torch.rand(1, 3, 128, 128))
    assert emb.shape == (1, 32, 8, 8) and torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="plain-ViT"):
        transfer_to_sam(mae, "lite_medsam")


@pytest.mark.slow
def test_mae_smoke_cli_loss_falls_and_writes_a_loadable_sam(tmp_path, capsys):
    cfg = REPO / "training" / "configs" / "mae_tiny_cpu.yaml"
    assert (
        main(
            [
                "--config",
                str(cfg),
                f"data_path={REPO / 'sample_data'}",
                f"run_dir={tmp_path}",
                "steps=30",
            ]
        )
        == 0
    )
    assert "final_loss" in capsys.readouterr().out
    model = build_sam(tmp_path / "sam_tiny_mae.pth", device="cpu")
    assert model.config.name == "tiny"


def test_mae_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    mae = MAE(_tiny())
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    waves = [torch.sin(xx / (3 + i) + yy / (5 + 2 * i)) for i in range(4)]  # learnable structure
    images = torch.stack(waves)[:, None].expand(-1, 3, -1, -1).contiguous()
    losses = []
    for _ in range(30):  # the same mask every step: the model can fit the masked patches
        loss, _, _ = mae(images, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
