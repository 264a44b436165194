"""Setting up a training run: its cases, its data sets, the process group of a distributed
launch and the stream of micro-batches (used by :class:`training.trainer.Trainer`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from napari_sam_med.device import resolve_device
from napari_sam_med.volume.datasets import find_pairs, read_msd

from .cases import apply_patient_regex, cases_from_csv
from .config import TrainConfig
from .data import load_volumes
from .sampling import TrainSlices, ValSlices
from .splits import apply_split, read_split, split_by_patient, write_split

logger = logging.getLogger("training")


def find_cases(data_cfg: Any) -> list:
    """All cases named by ``data.source`` / ``data.path`` (patient regex applied)."""
    if data_cfg.source == "msd":
        cases = read_msd(data_cfg.path)[0]
    elif data_cfg.source == "csv":
        cases = cases_from_csv(data_cfg.path)
    else:
        cases = find_pairs(data_cfg.path)
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


def loader_iter(ds: TrainSlices, cfg: TrainConfig, world: int, rank: int, start: int):
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
    aug = None if uses_cache(cfg) else cfg.aug
    train_ds = TrainSlices(train_vol, cfg.data, aug, model_config, cfg.run.seed)
    val_ds = ValSlices(val_vol, cfg.data, model_config) if val_vol else None
    return train_ds, val_ds, {"split": split, "skipped": skipped}


def uses_cache(cfg: TrainConfig) -> bool:
    return cfg.model.trainable != "full" and cfg.model.cache_embeddings
