"""Per-pass backward (training/passgrad.py) gives the same loss and gradients as one backward."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from training.config import SimConfig
from training.engine import InteractiveStep, set_trainable
from training.losses import SamLoss
from training.passgrad import PassGradients


def _gt(b: int, size: int = 128) -> torch.Tensor:
    gt = torch.zeros(b, 1, size, size)
    for i in range(b):
        gt[i, 0, 30 + 3 * i : 90, 20 : 100 - 5 * i] = 1
    return gt


def _run_step(module: InteractiveStep, trainable: str, batch: int, **kwargs):
    """One step on random images; the encoder runs inside the step only when it trains."""
    torch.manual_seed(0)
    images = torch.rand(batch, 3, 128, 128)
    if trainable == "full":
        return module(_gt(batch), torch.arange(batch), images=images, **kwargs)
    with torch.no_grad():
        emb = module.model.image_encoder(images).float()
    return module(_gt(batch), torch.arange(batch), embeddings=emb, **kwargs)


def _grads(model: torch.nn.Module, mode: str, trainable: str, scale: float = 1.0):
    model = copy.deepcopy(model)
    set_trainable(model, trainable)
    sim = dataclasses.replace(SimConfig(), pass_backward=mode)
    step = InteractiveStep(model, SamLoss(), sim, seed=3)
    loss, stats = _run_step(step, trainable, batch=3, step=4, grad_scale=scale)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), stats, grads


@pytest.mark.parametrize("trainable", ["full", "decoder"])
def test_each_pass_backward_equals_one_backward(tiny_model, trainable):
    loss_once, stats_once, g_once = _grads(tiny_model, "once", trainable)
    loss_each, stats_each, g_each = _grads(tiny_model, "each", trainable, scale=512.0)
    assert stats_once == stats_each  # same simulation (clicks depend on the same predictions)
    assert loss_each == pytest.approx(loss_once, rel=1e-6)
    assert set(g_once) == set(g_each)
    if trainable == "full":
        assert any(n.startswith("image_encoder.") for n in g_each)
    else:
        assert not any(n.startswith("image_encoder.") for n in g_each)
    for name, g in g_once.items():
        torch.testing.assert_close(g_each[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_surrogate_is_zero_valued_and_idle_without_grad(tiny_model):
    emb = torch.rand(1, 4, 8, 8, requires_grad=True)
    grads = PassGradients(emb * 2, tiny_model.mask_decoder.parameters())
    with torch.no_grad():
        assert not PassGradients(emb * 2, []).enabled
    assert grads.enabled
    grads.backward((grads.leaf**2).sum())
    s = grads.surrogate()
    assert float(s) == 0.0 and s.requires_grad
    s.backward()
    # d/d emb of sum((2 emb)^2) = 8 emb
    torch.testing.assert_close(emb.grad, 8 * emb.detach())


@pytest.mark.parametrize("trainable", ["full", "decoder"])
def test_bf16_autocast_step_on_cpu(tiny_model, trainable):
    """The GPU AMP path, exercised on the CPU: bf16 autocast, per-pass backward, fused decoder."""
    model = copy.deepcopy(tiny_model)
    set_trainable(model, trainable)
    step = InteractiveStep(model, SamLoss(), SimConfig(), seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = _run_step(step, trainable, batch=2, step=0)
    loss.backward()
    assert stats["passes"] == 11 and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)
    touched = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert touched == ({"image_encoder", "prompt_encoder", "mask_decoder"} if trainable == "full"
                       else {"mask_decoder"})  # fmt: skip
