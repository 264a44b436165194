"""The training loop of :class:`training.train.Trainer` (methods kept in their own file)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

logger = logging.getLogger("training")


def _mean_loss(self: Any, value: float) -> float:
    """Average a float over DDP ranks (identity on one process)."""
    if self.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=self.device)
    dist.all_reduce(t)
    return float(t.item()) / self.world


def _log(self: Any, record: dict[str, Any]) -> None:
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


def validate(self: Any) -> dict[str, float]:
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


def _checkpoint(self: Any, val: dict[str, float]) -> None:
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


def capabilities(cfg: Any) -> dict[str, bool]:
    """What the run taught the model, read by the 3D engine (not the model's name):
    ``clicks`` (corrective clicks with the previous logits as mask prompt), ``propagation``
    (boxes from a neighbouring slice, empty answers past the object's ends), ``point_start``."""
    return {
        "clicks": cfg.sim.num_clicks > 0,
        "propagation": float(getattr(cfg.data, "propagate_prob", 0.0)) > 0,
        "point_start": cfg.sim.point_prob > 0,
    }


def fit(self: Any) -> dict[str, Any]:
    """Train to ``run.steps``; validate and checkpoint on schedule and at the end.

    Returns:
        ``{"steps", "first_val", "last_val", "best", "history"}`` (history: per-step loss).
    """
    from tqdm.auto import tqdm

    from .train import _loader_iter

    cfg = self.cfg
    first_val = self.validate() if (self.step == 0 and cfg.run.val_at_start) else {}
    if first_val:
        self._log({"step": 0, **{f"val/{k}": v for k, v in first_val.items()}})
        logger.info("validation before training: %s", _fmt(first_val))
    batches = _loader_iter(
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


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if "/" not in k]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)
