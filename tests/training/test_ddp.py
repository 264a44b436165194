"""DDP with 2 CPU processes (gloo): one step's gradients equal a single-process run."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from napari_sam_med.build import build_sam
from training.config import SimConfig
from training.engine import InteractiveStep, set_trainable
from training.losses import SamLoss

GLOBAL_BATCH = 4


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(GLOBAL_BATCH, 3, 128, 128, generator=g)
    masks = torch.zeros(GLOBAL_BATCH, 1, 128, 128)
    for i in range(GLOBAL_BATCH):
        masks[i, 0, 10 + 5 * i : 60 + 5 * i, 20 : 70 + 3 * i] = 1
    return images, masks, torch.arange(100, 100 + GLOBAL_BATCH)


def _model_and_step() -> tuple[torch.nn.Module, InteractiveStep]:
    torch.manual_seed(0)
    model = build_sam("tiny", device="cpu", inference=False)
    set_trainable(model, "full")
    return model, InteractiveStep(model, SamLoss(), SimConfig(), seed=7)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, step = _model_and_step()
    ddp = torch.nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    images, masks, uids = _batch()
    mine = slice(rank, None, world)  # the rank's share of the global batch
    loss, _ = ddp(masks[mine], uids[mine], 3, images=images[mine])
    loss.backward()
    if rank == 0:
        torch.save(_grads(model), out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path):
    out = str(tmp_path / "ddp_grads.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)

    model, step = _model_and_step()
    images, masks, uids = _batch()
    order = torch.cat([torch.arange(0, GLOBAL_BATCH, 2), torch.arange(1, GLOBAL_BATCH, 2)])
    loss, _ = step(masks[order], uids[order], 3, images=images[order])
    loss.backward()
    single = _grads(model)
    assert single.keys() == ddp_grads.keys()
    nonzero = 0
    for name, g in single.items():
        torch.testing.assert_close(ddp_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
        nonzero += int(g.abs().sum() > 0)
    assert nonzero > len(single) // 2
