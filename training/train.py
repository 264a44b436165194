"""Fine-tune SAM / MedSAM / LiteMedSAM on CT/MRI with SAM's interactive simulation.

Usage::

    python -m training.train --config training/configs/lite_medsam_1gpu.yaml key=value ...
    torchrun --nproc_per_node 8 -m training.train --config training/configs/medsam_vit_b_8gpu.yaml

Overrides are ``section.key=value`` (or ``--section.key value``). The run folder
(``run.run_dir``) receives ``config.yaml``, ``split.json``, ``skipped_cases.json``,
``metrics.jsonl``, ``tensorboard/`` and ``checkpoints/``. ``run.resume=auto`` continues
from the latest resume state of the run folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from napari_sam_med.build import build_sam
from napari_sam_med.device import amp_dtype, autocast_context, resolve_device

from .cases import apply_patient_regex, cases_from_csv, cases_from_folder, cases_from_msd
from .checkpoint import (
    find_resume,
    load_training_state,
    set_rng_state,
)
from .config import TrainConfig, load_config, normalise_flags, save_config
from .data import load_volumes
from .engine import (
    EmbeddingStore,
    InteractiveStep,
    build_optimizer,
    encoder_fingerprint,
    set_trainable,
)
from .losses import build_loss
from .sampling import TrainSlices, ValSlices
from .splits import apply_split, read_split, split_by_patient, write_split
from .textprompt import build_text_table

logger = logging.getLogger("training")


def find_cases(data_cfg: Any) -> list:
    """All cases named by ``data.source`` / ``data.path`` (patient regex applied)."""
    if data_cfg.source == "msd":
        cases = cases_from_msd(data_cfg.path)[0]
    elif data_cfg.source == "csv":
        cases = cases_from_csv(data_cfg.path)
    else:
        cases = cases_from_folder(data_cfg.path)
    return apply_patient_regex(cases, data_cfg.patient_regex)


def setup_distributed(run_cfg: Any) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(run_cfg.device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(run_cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def micro_batches(
    n: int, batch: int, world: int, rank: int, seed: int, start: int
) -> Iterator[tuple[int, list[int]]]:
    """``(epoch, indices)`` of this rank's micro-batches from global micro-batch ``start`` on.

    Epoch ``e`` shuffles ``range(n)`` with seed ``(seed, e)``; global micro-batch ``j`` is
    ``perm[j*batch*world : (j+1)*batch*world]`` and rank ``r`` takes every ``world``-th index
    of it, so a global batch is the same for any number of ranks.
    """
    per_epoch = n // (batch * world)
    if per_epoch == 0:
        raise ValueError(f"data.samples_per_epoch={n} < batch_size*world={batch * world}")
    j = start
    perm_epoch, perm = -1, []
    while True:
        epoch, k = divmod(j, per_epoch)
        if epoch != perm_epoch:  # one permutation per epoch (not per micro-batch)
            g = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)
            perm_epoch, perm = epoch, torch.randperm(n, generator=g).tolist()
        chunk = perm[k * batch * world : (k + 1) * batch * world]
        yield epoch, chunk[rank::world]
        j += 1


def _loader_iter(ds: TrainSlices, cfg: TrainConfig, world: int, rank: int, start: int):
    """Batches from global micro-batch ``start`` on (one DataLoader per sampling epoch)."""
    gen = micro_batches(len(ds), cfg.optim.batch_size, world, rank, cfg.run.seed, start)
    per_epoch = len(ds) // (cfg.optim.batch_size * world)
    while True:
        epoch, first = next(gen)
        plan = [first] + [next(gen)[1] for _ in range(per_epoch - 1 - start % per_epoch)]
        start = 0
        ds.set_epoch(epoch)
        yield from DataLoader(ds, batch_sampler=plan, num_workers=cfg.data.workers)


def prepare_data(cfg: TrainConfig, model_config: Any, rank: int) -> tuple[Any, Any, dict]:
    """Cases -> patient split (written on rank 0) -> cached volumes -> train/val datasets."""
    run_dir = Path(cfg.run.run_dir)
    cases = find_cases(cfg.data)
    if cfg.data.split_file:
        split = read_split(cfg.data.split_file)
    else:
        split = split_by_patient(cases, cfg.data.val_fraction, cfg.data.split_seed)
    train_cases, val_cases = apply_split(cases, split)
    cache_dir = cfg.data.cache_dir or str(run_dir / "cache")
    train_vol = load_volumes(train_cases, cfg.data, cache_dir)
    val_vol = load_volumes(val_cases, cfg.data, cache_dir) if val_cases else None
    skipped = train_vol.skipped + (val_vol.skipped if val_vol else [])
    if rank == 0:
        write_split(run_dir, split)
        (run_dir / "skipped_cases.json").write_text(json.dumps(skipped, indent=2) + "\n")
    aug = None if _uses_cache(cfg) else cfg.aug
    train_ds = TrainSlices(train_vol, cfg.data, aug, model_config, cfg.run.seed)
    val_ds = ValSlices(val_vol, cfg.data, model_config) if val_vol else None
    return train_ds, val_ds, {"split": split, "skipped": skipped}


def _uses_cache(cfg: TrainConfig) -> bool:
    return cfg.model.trainable != "full" and cfg.model.cache_embeddings


class Trainer:
    """Holds the model, optimiser and data of one run; :meth:`fit` runs it."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world, self.device = setup_distributed(cfg.run)
        self.run_dir = Path(cfg.run.run_dir)
        if self.rank == 0:
            save_config(cfg, self.run_dir)
        torch.manual_seed(cfg.run.seed)
        self.model = build_sam(
            cfg.model.name, cfg.model.checkpoint, device=self.device, inference=False
        )
        set_trainable(self.model, cfg.model.trainable, cfg.model.freeze_bn)
        if cfg.model.compile:
            self.model.image_encoder.compile()
            self.model.mask_decoder.compile()
        self.train_ds, self.val_ds, self.data_info = prepare_data(cfg, self.model.config, self.rank)
        values = sorted(
            {v for ds in (self.train_ds, self.val_ds) if ds for idx in ds.vi.index for v in idx}
        )
        self.text_table = build_text_table(cfg, self.model, values)
        self.step_module: torch.nn.Module = InteractiveStep(
            self.model, build_loss(cfg.loss), cfg.sim, cfg.run.seed
        )
        if self.world > 1:
            self.step_module = torch.nn.parallel.DistributedDataParallel(
                self.step_module, find_unused_parameters=True
            )
        self.optimizer, self.scheduler = build_optimizer(
            self.model,
            cfg.optim,
            cfg.model.layer_decay if cfg.model.trainable == "full" else 1.0,
            cfg.run.steps,
        )
        self.dtype = amp_dtype(self.device, cfg.run.amp)
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        )
        self.store = None
        if _uses_cache(cfg):
            d = cfg.data
            space = encoder_fingerprint(self.model, d.intensity, d.path, d.spacing, d.axis)
            self.store = EmbeddingStore(directory=cfg.model.embedding_cache_dir, namespace=space)
            fuse = getattr(self.model.image_encoder, "fuse_for_inference", None)
            if callable(fuse):  # the frozen encoder only embeds: use its fast eval path
                fuse()
        self.step, self.best, self.history = 0, -1.0, []
        self.writer = None

    def autocast(self) -> Any:
        """A fresh autocast context (a no-op without AMP)."""
        return autocast_context(self.device, self.dtype)

    def resume(self) -> None:
        """Restore everything from ``run.resume`` (``auto``: latest state in the run folder)."""
        path = find_resume(self.cfg.run.resume, self.run_dir)
        if path is None:
            return
        state = load_training_state(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best = float(state["extra"].get("best", -1.0))
        self.history = list(state["extra"].get("history", []))
        logger.info("resumed from %s at step %d", path, self.step)

    def train_micro(self, batch: dict[str, Any], sync: bool) -> tuple[torch.Tensor, dict]:
        """Forward + backward of one micro-batch (loss scaled for accumulation)."""
        masks = batch["mask"].to(self.device)
        images = batch["image"].to(self.device)
        uids = batch["uid"]
        emb = None
        if self.cfg.model.trainable != "full":
            if self.store is not None:
                emb = self.store.embed(
                    self.model.image_encoder, images, list(batch["key"]), self.autocast()
                )
            else:
                with torch.no_grad(), self.autocast():
                    emb = self.model.image_encoder(images).float()
        text = None
        if self.text_table is not None:
            text = self.text_table(batch["label"], self.device)
        no_sync = getattr(self.step_module, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else nullcontext()
        with ctx:
            with self.autocast():
                loss, stats = self.step_module(
                    masks,
                    uids,
                    self.step,
                    images=None if emb is not None else images,
                    embeddings=emb,
                    grad_scale=self.scaler.get_scale() if self.scaler else 1.0,
                    text=text,
                    prompt_box=batch.get("prompt_box"),
                )
            scaled = loss / self.cfg.optim.accumulation
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach(), stats

    def optimizer_step(self) -> float:
        """Unscale, clip, step optimiser/scaler/scheduler; returns the gradient norm."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    from ._loop import _checkpoint, _log, _mean_loss, fit, validate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(config_path, normalise_flags(argv))
    trainer = Trainer(cfg)
    trainer.resume()
    summary = trainer.fit()
    if trainer.rank == 0:
        print(json.dumps(summary, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
