"""Training step, trainable parts, optimiser/scheduler, embedding cache and validation.

The interactive step is an ``nn.Module`` (:class:`InteractiveStep`) so that DDP can wrap it: its
forward runs the image encoder once (or takes cached embeddings) and the 11 decoder passes of
:func:`training.simulate.simulate_train`, and returns the loss.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .losses import SamLoss
from .passgrad import PassGradients
from .simulate import simulate_eval, simulate_train

logger = logging.getLogger(__name__)


class InteractiveStep(nn.Module):
    """Loss of one batch under SAM's interactive simulation (DDP-wrappable).

    Args:
        model: the SAM model (trainable parts already chosen).
        loss: a :class:`SamLoss`.
        sim: a ``SimConfig``.
        seed: the run seed (simulation randomness is keyed by ``(seed, step, uid)``).
    """

    def __init__(self, model: nn.Module, loss: SamLoss, sim: Any, seed: int) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.sim = sim
        self.seed = int(seed)

    def forward(
        self,
        masks: torch.Tensor,
        uids: torch.Tensor,
        step: int,
        images: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        grad_scale: float = 1.0,
        text: torch.Tensor | None = None,
        prompt_box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a batch.

        Args:
            masks: ``(B, 1, S, S)`` ground truth on the padded model input.
            uids: ``(B,)`` global sample ids.
            step: optimiser step (keys the simulation schedule).
            images: ``(B, 3, S, S)`` normalised images (the encoder runs once on them), or
            embeddings: ``(B, C, h, w)`` precomputed embeddings (decoder-only training).
            grad_scale: the GradScaler's current scale (fp16 AMP), for per-pass backward.
            text: ``(B, D)`` label-name embeddings for text first prompts (``sim.text_prob``).
            prompt_box: ``(B, 4)`` given first-prompt boxes (propagation samples; NaN: none).
        """
        if embeddings is None:
            embeddings = self.model.image_encoder(images)
        grads = None
        if self.sim.pass_backward == "each":
            pe, dec = self.model.prompt_encoder, self.model.mask_decoder
            params = [*pe.parameters(), *dec.parameters()]
            grads = PassGradients(embeddings, params, grad_scale)
        return simulate_train(
            self.model,
            embeddings,
            masks,
            self.loss,
            self.sim,
            self.seed,
            step,
            uids,
            grads,
            text,
            prompt_box,
        )


def set_trainable(model: nn.Module, mode: str, freeze_bn: bool = True) -> None:
    """Choose what trains: ``decoder``, ``decoder_prompt`` or ``full``.

    Frozen parts get ``requires_grad=False`` and eval mode. With ``freeze_bn`` BatchNorm
    layers keep their running statistics (eval mode) while their affine parameters train.
    """
    model.train()
    parts = {
        "decoder": ("mask_decoder",),
        "decoder_prompt": ("mask_decoder", "prompt_encoder"),
        "full": ("mask_decoder", "prompt_encoder", "image_encoder"),
    }[mode]
    for name, child in model.named_children():
        trainable = name in parts
        child.requires_grad_(trainable)
        child.train(trainable)
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _encoder_layer_id(name: str, model: nn.Module) -> tuple[int, int]:
    """``(layer id, number of layers)`` of an image-encoder parameter for LR decay."""
    enc = model.image_encoder
    if hasattr(enc, "blocks"):
        depths = [len(enc.blocks)]
        m = re.match(r"image_encoder\.blocks\.(\d+)\.", name)
        block = int(m.group(1)) if m else None
    else:  # TinyViT: stages of blocks
        depths = [len(stage.blocks) for stage in enc.layers]
        m = re.match(r"image_encoder\.layers\.(\d+)\.blocks\.(\d+)\.", name)
        block = sum(depths[: int(m.group(1))]) + int(m.group(2)) if m else None
        m2 = re.match(r"image_encoder\.layers\.(\d+)\.downsample\.", name)
        if m2:
            block = sum(depths[: int(m2.group(1)) + 1]) - 1
    n = sum(depths) + 1
    if block is not None:
        return block + 1, n
    if name.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed")):
        return 0, n
    return n, n  # neck


def param_groups(model: nn.Module, optim: Any, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases/norms/embeddings; layer-wise LR decay.

    The encoder layer ``i`` of ``n`` gets ``lr * layer_decay ** (n - i)``; the neck, prompt
    encoder and decoder get ``lr``.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim <= 1 or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))
        scale = 1.0
        if name.startswith("image_encoder.") and layer_decay < 1.0:
            layer, n = _encoder_layer_id(name, model)
            scale = layer_decay ** (n - layer)
        groups[(scale, 0.0 if no_wd else optim.weight_decay)].append(p)
    return [
        {"params": ps, "lr": optim.lr * s, "lr_scale": s, "weight_decay": wd}
        for (s, wd), ps in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def lr_factor(step: int, optim: Any, total_steps: int) -> float:
    """Warmup (linear from 0) then ``cosine`` to ``min_lr_ratio``, ``step`` decay or constant."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "step":
        return optim.step_gamma ** ((step - optim.warmup_steps) // max(optim.step_size, 1))
    span = max(total_steps - optim.warmup_steps, 1)
    t = min((step - optim.warmup_steps) / span, 1.0)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(
    model: nn.Module, optim: Any, layer_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its warmup + decay scheduler."""
    groups = param_groups(model, optim, layer_decay)
    if not groups:
        raise ValueError("no trainable parameters: check model.trainable")
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim, total_steps))
    return opt, sched


class EmbeddingStore:
    """Cache of frozen-encoder embeddings keyed by image identity (``case|slice``).

    Stored as float16 on the CPU (a LiteMedSAM slice is 2 MB) up to ``max_items`` in memory,
    and, with a ``directory``, also on disk (one float16 ``.pt`` file per slice, named by a hash
    of ``namespace`` and the key) so that a resumed or repeated run skips the encoder. The
    namespace must change whenever the embedding would (encoder weights, intensity preset,
    data): see :func:`encoder_fingerprint`. A corrupt file is recomputed.
    """

    def __init__(
        self, max_items: int = 4096, directory: str | None = None, namespace: str = ""
    ) -> None:
        self.max_items = max_items
        self.items: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.directory = Path(directory) if directory else None
        self.namespace = namespace
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(f"{self.namespace}|{key}".encode()).hexdigest()[:32]
        return self.directory / f"{digest}.pt"

    def _from_disk(self, key: str) -> torch.Tensor | None:
        path = self._file(key)
        if path is None or not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            logger.warning("embedding cache entry %s unreadable (%s); recomputing", path, err)
            return None

    def _keep(self, key: str, emb: torch.Tensor) -> None:
        half = emb.to("cpu", torch.float16)
        if len(self.items) < self.max_items:
            self.items[key] = half
        path = self._file(key)
        if path is not None:  # absent or unreadable: (re)write it
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(half.clone(), tmp)
            os.replace(tmp, path)

    @torch.no_grad()
    def embed(
        self, encoder: nn.Module, images: torch.Tensor, keys: list[str], autocast: Any
    ) -> torch.Tensor:
        """``(B, C, h, w)`` float32 embeddings on ``images.device``, computing only misses.

        Fresh embeddings are rounded through float16 too, so a run gives the same numbers
        whether an embedding came from the cache or not (resume stays exact).
        """
        for k in keys:
            if k not in self.items and len(self.items) < self.max_items:
                found = self._from_disk(k)
                if found is not None:
                    self.items[k] = found
        todo = [i for i, k in enumerate(keys) if k not in self.items]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        fresh: dict[int, torch.Tensor] = {}
        if todo:
            was_training = encoder.training
            encoder.eval()  # frozen: eval mode takes the fused inference path where there is one
            with autocast:
                new = encoder(images[todo]).float()
            encoder.train(was_training)
            fresh = {i: e.half().float() for i, e in zip(todo, new, strict=True)}
            for i, e in fresh.items():
                self._keep(keys[i], e)
        out = [
            fresh[i] if i in fresh else self.items[k].to(images.device, torch.float32)
            for i, k in enumerate(keys)
        ]
        return torch.stack(out)


def encoder_fingerprint(model: nn.Module, *extra: object) -> str:
    """SHA-256 of the image encoder's weights and ``extra`` (e.g. preset, data path)."""
    h = hashlib.sha256()
    for name, t in sorted(model.image_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()


# The data settings that change a slice's pixels, and so its embedding.
SLICE_SHAPING = ("intensity", "path", "spacing", "axis", "orientation")


def embedding_namespace(model: nn.Module, data_cfg: Any) -> str:
    """The :class:`EmbeddingStore` namespace of a run: the encoder's weights and every data
    setting in :data:`SLICE_SHAPING` (a cache filled under other settings is not reused)."""
    return encoder_fingerprint(model, *(getattr(data_cfg, k) for k in SLICE_SHAPING))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    autocast: Any,
    clicks: list[int],
    store: EmbeddingStore | None = None,
    text_table: Any = None,
) -> dict[str, float]:
    """Validation Dice with the simulator's deterministic clicks, per label and overall.

    Metrics: ``dice_box`` (after the exact box), ``dice_point`` (after the object's centre
    point), ``dice_box_click{k}`` (after ``k`` corrective clicks following the box). Keys are
    ``"{metric}"`` (all labels) and ``"{metric}/label{v}"``. With a ``text_table`` (text
    prompts) also ``dice_text`` (the label name alone) and ``dice_text_click1``; then
    ``dice_point_click1`` is reported too, the point-only baseline for text + 1 click.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    n_clicks = max(clicks) if clicks else 0
    per: dict[str, list[float]] = defaultdict(list)
    for batch in loader:
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        if store is not None:
            emb = store.embed(model.image_encoder, images, list(batch["key"]), autocast)
        else:
            with autocast:
                emb = model.image_encoder(images).float()
        text_clicks = 1 if text_table is not None else 0
        with autocast:
            box = simulate_eval(model, emb, masks, "box", n_clicks)
            point = simulate_eval(model, emb, masks, "point", text_clicks)
            if text_table is not None:
                text = text_table(batch["label"], device)
                by_text = simulate_eval(model, emb, masks, "text", 1, text=text)
        metrics = {"dice_box": box[0], "dice_point": point[0]}
        metrics.update({f"dice_box_click{k}": box[k] for k in clicks})
        if text_table is not None:
            metrics.update(
                dice_point_click1=point[1], dice_text=by_text[0], dice_text_click1=by_text[1]
            )
        labels = batch["label"].tolist()
        for name, values in metrics.items():
            for v, lab in zip(values.tolist(), labels, strict=True):
                per[name].append(v)
                per[f"{name}/label{lab}"].append(v)
    for m, mode in modes.items():
        m.training = mode
    return {k: float(np.mean(v)) for k, v in per.items()}
