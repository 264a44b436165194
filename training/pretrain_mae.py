"""MAE pre-training of SAM's plain-ViT image encoder on unlabelled CT/MRI slices.

He et al. 2022 (Masked Autoencoders), as used to seed SAM's encoder:

* 75% of the patches are masked at random (per image: argsort of uniform noise);
* the encoder (SAM's own ``Block`` modules, global attention, no relative positions) sees the
  visible patches only, with learned absolute positions;
* a light decoder (``decoder_depth`` blocks of width ``decoder_dim``) gets the encoded tokens plus
  a shared mask token at every masked position, and predicts the pixels of each patch;
* the loss is the MSE on the masked patches of the per-patch normalised pixels.

:func:`transfer_to_sam` then loads the weights into SAM's ``ImageEncoderViT`` (vit_b/l/h or
``tiny``): patch embedding and blocks copied, absolute positions resized (bicubic) to the SAM
grid, the relative-position tables of every block zero-initialised as SAM does, windowed
attention needing no parameters of its own, and the neck left at its initialisation. The
result is written as one of our checkpoints, usable as ``model.name`` of a fine-tuning config.

Usage: ``python -m training.pretrain_mae --config training/configs/mae_vit_b_gpu.yaml k=v``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sam_med.build import build_model, save_checkpoint
from napari_sam_med.config import get_config
from napari_sam_med.device import amp_dtype, autocast_context, resolve_device
from napari_sam_med.modeling.image_encoder import Block, PatchEmbed
from napari_sam_med.preprocessing import apply_intensity, guess_preset, prepare_image
from napari_sam_med.volume.datasets import find_pairs
from napari_sam_med.volume.io import read_volume

logger = logging.getLogger("training.mae")


@dataclass
class MAEConfig:
    """MAE settings. ``encoder`` names the registry ViT whose width/depth/heads are used."""

    encoder: str = "vit_b"
    img_size: int = 224
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    data_path: str = ""
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    run_dir: str = "runs/mae"
    log_every: int = 10


class MAE(nn.Module):
    """Masked autoencoder over ``(B, 3, S, S)`` images with ``p x p`` patches."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        v = get_config(cfg.encoder).vit
        self.patch = v.patch_size
        self.grid = cfg.img_size // v.patch_size
        self.mask_ratio = cfg.mask_ratio
        self.norm_pix_loss = cfg.norm_pix_loss
        self.patch_embed = PatchEmbed(v.patch_size, 3, v.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid, self.grid, v.embed_dim))
        self.blocks = nn.ModuleList(
            Block(v.embed_dim, v.num_heads, v.mlp_ratio, True, use_rel_pos=False)
            for _ in range(v.depth)
        )
        self.norm = nn.LayerNorm(v.embed_dim)
        self.decoder_embed = nn.Linear(v.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.grid**2, cfg.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, 4.0, True, use_rel_pos=False)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, v.patch_size**2 * 3)
        for p in (self.pos_embed, self.mask_token, self.decoder_pos):
            nn.init.trunc_normal_(p, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, N, p*p*3)`` patches in row-major grid order."""
        b, c, _, _ = images.shape
        g, p = self.grid, self.patch
        x = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * c)

    def random_masking(self, n: int, b: int, device: torch.device, generator=None):
        """``(keep (B, n_keep), mask (B, N) with 1 = masked)`` from per-image random noise."""
        n_keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(b, n, device=device, generator=generator)
        order = noise.argsort(dim=1)
        keep = order[:, :n_keep]
        mask = torch.ones(b, n, device=device)
        mask.scatter_(1, keep, 0.0)
        return keep, mask

    def _run(self, blocks: nn.ModuleList, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, None]  # (B, 1, N, D): a 1 x N "grid" for SAM's global-attention Block
        for blk in blocks:
            x = blk(x)
        return x[:, 0]

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, pred (B, N, p*p*3), mask (B, N))`` for normalised ``(B, 3, S, S)`` images."""
        b = images.shape[0]
        tokens = (self.patch_embed(images) + self.pos_embed).flatten(1, 2)  # (B, N, D)
        n = tokens.shape[1]
        keep, mask = self.random_masking(n, b, images.device, generator)
        visible = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        latent = self.norm(self._run(self.blocks, visible))
        dec = self.decoder_embed(latent)
        full = self.mask_token.expand(b, n, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, dec.shape[-1]), dec)
        pred = self.decoder_pred(
            self.decoder_norm(self._run(self.decoder_blocks, full + self.decoder_pos))
        )
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, pred, mask


def transfer_to_sam(mae: MAE, sam_name: str) -> nn.Module:
    """A SAM model (random prompt encoder/decoder) whose image encoder holds the MAE weights.

    Raises:
        ValueError: ``sam_name`` is not a plain-ViT configuration of the same width/depth.
    """
    config = get_config(sam_name)
    if config.encoder != "vit":
        raise ValueError(f"MAE transfer needs a plain-ViT SAM config, got {sam_name!r}")
    sam = build_model(config)
    enc = sam.image_encoder
    src = mae.state_dict()
    dst = enc.state_dict()
    new = {}
    for key, value in dst.items():
        if key.startswith(("patch_embed.", "blocks.")) and key in src:
            if src[key].shape != value.shape:
                raise ValueError(
                    f"MAE weight {key} {tuple(src[key].shape)} vs SAM {tuple(value.shape)}"
                )
            new[key] = src[key]
        elif key.endswith(("rel_pos_h", "rel_pos_w")):
            new[key] = torch.zeros_like(value)  # SAM's initialisation of the tables
        elif key == "pos_embed":
            pos = src["pos_embed"].permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=value.shape[1:3], mode="bicubic", align_corners=False)
            new[key] = pos.permute(0, 2, 3, 1)
        else:
            new[key] = value  # the neck keeps its initialisation
    missing = [k for k in dst if k.startswith("blocks.") and "rel_pos" not in k and k not in src]
    if missing:
        raise ValueError(f"MAE encoder lacks SAM weights {missing[:5]} (different depth?)")
    enc.load_state_dict(new)
    return sam


def slice_sampler(data_path: str, img_size: int, encoder: str, seed: int):
    """Yield normalised ``(3, S, S)`` slices of every volume below ``data_path`` (labels unused)."""
    cases = find_pairs(data_path, require_labels=False)
    volumes = []
    for case in cases:
        vol = read_volume(case.image)
        volumes.append(apply_intensity(vol.array, guess_preset(case.modality, vol.array)))
    config = dataclasses.replace(get_config(encoder), img_size=img_size)
    rng = np.random.default_rng(seed)
    while True:
        arr = volumes[int(rng.integers(len(volumes)))]
        img = arr[int(rng.integers(arr.shape[0]))]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        yield prepare_image(np.ascontiguousarray(img), config)[0][0]


def pretrain(cfg: MAEConfig) -> dict[str, Any]:
    """Run MAE pre-training; write ``mae_last.pt`` and ``sam_<encoder>_mae.pth`` in the run dir."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, cfg.amp)
    model = MAE(cfg).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1))
    )
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    data = slice_sampler(cfg.data_path, cfg.img_size, cfg.encoder, cfg.seed)
    history = []
    for step in range(cfg.steps):
        images = torch.stack([next(data) for _ in range(cfg.batch_size)]).to(device)
        with autocast_context(device, dtype):
            loss, _, _ = model(images)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        history.append(float(loss))
        if (step + 1) % cfg.log_every == 0:
            logger.info("step %d loss %.4f", step + 1, history[-1])
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / ".mae_last.pt.tmp"
    torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict()}, tmp)
    tmp.replace(run / "mae_last.pt")
    sam = transfer_to_sam(model.cpu(), cfg.encoder)
    out = save_checkpoint(
        sam, run / f"sam_{cfg.encoder}_mae.pth", metadata={"mae": dataclasses.asdict(cfg)}
    )
    return {"history": history, "checkpoint": str(out)}


def load_mae_config(argv: list[str]) -> MAEConfig:
    """An :class:`MAEConfig` from ``[--config X.yaml] key=value ...`` (unknown keys are errors)."""
    import yaml

    from .config import _coerce, apply_overrides, normalise_flags

    argv = list(argv)
    data: dict[str, Any] = {}
    if "--config" in argv:
        i = argv.index("--config")
        data = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
        del argv[i : i + 2]
    apply_overrides(data, normalise_flags(argv))
    known = {f.name for f in dataclasses.fields(MAEConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown MAE config keys {unknown}; expected {sorted(known)}")
    defaults = MAEConfig()
    return MAEConfig(**{k: _coerce(v, getattr(defaults, k), k) for k, v in data.items()})


def main(argv: list[str] | None = None) -> int:
    """``python -m training.pretrain_mae --config X.yaml key=value ...``."""
    cfg = load_mae_config(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = pretrain(cfg)
    print(json.dumps({"checkpoint": summary["checkpoint"], "final_loss": summary["history"][-1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
