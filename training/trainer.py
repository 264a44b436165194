"""The :class:`Trainer`: one run's model, optimiser and data, and its loop (train, validate,
log, checkpoint, resume)."""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from napari_sam_med.build import build_sam
from napari_sam_med.device import amp_dtype, autocast_context

from .checkpoint import find_resume, load_training_state, set_rng_state
from .config import TrainConfig, save_config
from .engine import (
    EmbeddingStore,
    InteractiveStep,
    build_optimizer,
    embedding_namespace,
    set_trainable,
)
from .losses import build_loss
from .run_setup import loader_iter, prepare_data, setup_distributed, uses_cache
from .textprompt import build_text_table

logger = logging.getLogger("training")


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
        if uses_cache(cfg):
            space = embedding_namespace(self.model, cfg.data)
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

    def _mean_loss(self, value: float) -> float:
        """Average a float over DDP ranks (identity on one process)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world


    def _log(self, record: dict[str, Any]) -> None:
        """Rank 0: append to ``metrics.jsonl`` and TensorBoard."""
        if self.rank != 0:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - depends on the environment
                logger.warning("tensorboard is not installed (pip install 'napari-sam-med[train]')")
                self.writer = False
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.writer:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()


    def validate(self) -> dict[str, float]:
        """Validation Dice on rank 0 (other ranks wait); ``{}`` without a validation set."""
        from .engine import evaluate

        metrics: dict[str, float] = {}
        if self.rank == 0 and self.val_ds is not None and len(self.val_ds):
            loader = DataLoader(self.val_ds, batch_size=self.cfg.optim.batch_size, shuffle=False)
            metrics = evaluate(
                self.model,
                loader,
                self.device,
                self.autocast(),
                self.cfg.run.val_clicks,
                self.store,
                self.text_table,
            )
            overall = [v for k, v in metrics.items() if k.startswith("dice") and "/" not in k]
            metrics["dice_mean"] = sum(overall) / len(overall)
        if self.world > 1:
            dist.barrier()
        return metrics


    def _checkpoint(self, val: dict[str, float]) -> None:
        """Rank 0: model + resume state; ``best.pth`` when the mean validation Dice improves."""
        from .checkpoint import save_best, save_training_state

        if self.rank == 0:
            meta = {
                "training": {
                    "step": self.step,
                    "run_dir": str(self.run_dir),
                    "trainable": self.cfg.model.trainable,
                    "intensity": self.cfg.data.intensity,
                    "click_trained": self.cfg.sim.num_clicks > 0,
                    "capabilities": capabilities(self.cfg),
                    "val": val,
                }
            }
            if self.text_table is not None:
                meta.update(self.text_table.metadata())
            if val and val["dice_mean"] > self.best:
                self.best = val["dice_mean"]
                save_best(self.run_dir, self.model, meta)
            extra = {"best": self.best, "history": self.history}
            save_training_state(
                self.run_dir,
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                self.scaler,
                extra,
                meta,
                self.cfg.run.keep_last,
            )
        if self.world > 1:
            dist.barrier()


    def fit(self) -> dict[str, Any]:
        """Train to ``run.steps``; validate and checkpoint on schedule and at the end.

        Returns:
            ``{"steps", "first_val", "last_val", "best", "history"}`` (history: per-step loss).
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        first_val = self.validate() if (self.step == 0 and cfg.run.val_at_start) else {}
        if first_val:
            self._log({"step": 0, **{f"val/{k}": v for k, v in first_val.items()}})
            logger.info("validation before training: %s", _fmt(first_val))
        batches = loader_iter(
            self.train_ds, cfg, self.world, self.rank, self.step * cfg.optim.accumulation
        )
        bar = tqdm(
            total=cfg.run.steps, initial=self.step, disable=self.rank != 0 or not cfg.run.progress
        )
        last_val: dict[str, float] = {}
        while self.step < cfg.run.steps:
            losses, stats = [], {}
            for a in range(cfg.optim.accumulation):
                loss, stats = self.train_micro(next(batches), a == cfg.optim.accumulation - 1)
                losses.append(float(loss))
            norm = self.optimizer_step()
            self.step += 1
            loss = self._mean_loss(sum(losses) / len(losses))
            self.history.append(loss)
            lr = self.optimizer.param_groups[-1]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if self.step % cfg.run.log_every == 0 or self.step == cfg.run.steps:
                self._log(
                    {
                        "step": self.step,
                        "train/loss": loss,
                        "train/lr": lr,
                        "train/grad_norm": norm,
                        **{f"train/{k}": v for k, v in stats.items()},
                    }
                )
            end = self.step == cfg.run.steps
            val = {}
            if (cfg.run.val_every and self.step % cfg.run.val_every == 0) or end:
                val = last_val = self.validate()
                if val:
                    self._log({"step": self.step, **{f"val/{k}": v for k, v in val.items()}})
                    bar.write(f"step {self.step}: {_fmt(val)}")
            if (cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0) or end:
                self._checkpoint(val)
        bar.close()
        if self.writer:
            self.writer.close()
        return {
            "steps": self.step,
            "first_val": first_val,
            "last_val": last_val,
            "best": self.best,
            "history": self.history,
            "run_dir": str(Path(self.run_dir)),
        }


def capabilities(cfg: Any) -> dict[str, bool]:
    """What the run taught the model, read by the 3D engine (not the model's name):
    ``clicks`` (corrective clicks with the previous logits as mask prompt), ``propagation``
    (boxes from a neighbouring slice, empty answers past the object's ends), ``point_start``."""
    return {
        "clicks": cfg.sim.num_clicks > 0,
        "propagation": float(getattr(cfg.data, "propagate_prob", 0.0)) > 0,
        "point_start": cfg.sim.point_prob > 0,
    }


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if "/" not in k]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)
