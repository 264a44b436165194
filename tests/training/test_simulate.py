"""Each rule of SAM's interactive simulation (training/simulate.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import SimConfig
from training.engine import InteractiveStep
from training.losses import SamLoss
from training.simulate import (
    CLICK,
    FIRST,
    NO_POINT,
    decode_step,
    error_point,
    make_schedule,
    mask_box,
    noisy_box,
    simulate_train,
)


def test_error_points_lie_in_the_error_region_with_the_right_sign():
    gt = np.zeros((32, 32), bool)
    gt[4:20, 4:20] = True  # 256 px
    pred = np.zeros_like(gt)
    pred[4:20, 4:18] = True  # misses 2 columns: 32 false-negative px
    pred[25:29, 25:27] = True  # 8 false-positive px
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(2000):
        x, y, lab = error_point(pred, gt, rng)
        assert pred[y, x] != gt[y, x], "a click outside the error region"
        assert lab == (1 if gt[y, x] else 0)  # FN -> positive, FP -> negative
        labels.append(lab)
    # uniform over the 40 error pixels: 32/40 positive
    assert np.mean(labels) == pytest.approx(0.8, abs=0.03)


def test_error_point_of_a_perfect_prediction_is_positive_inside_the_object():
    gt = np.zeros((16, 16), bool)
    gt[3:9, 3:9] = True
    x, y, lab = error_point(gt.copy(), gt, np.random.default_rng(1))
    assert lab == 1 and gt[y, x]


def test_box_noise_std_is_ten_percent_of_the_side_capped_at_20px():
    rng = np.random.default_rng(0)
    small = np.array([100, 100, 199, 149], np.float32)  # 100 x 50 px
    big = np.array([100, 100, 499, 499], np.float32)  # 400 px: 10% = 40 -> capped at 20
    d_small = np.stack([noisy_box(small, rng, 0.1, 20, 1024) - small for _ in range(4000)])
    d_big = np.stack([noisy_box(big, rng, 0.1, 20, 1024) - big for _ in range(4000)])
    np.testing.assert_allclose(d_small.std(0), [10, 5, 10, 5], rtol=0.06)
    np.testing.assert_allclose(d_big.std(0), [20, 20, 20, 20], rtol=0.06)
    assert abs(d_small.mean()) < 0.5


def test_noisy_box_stays_inside_the_image_and_ordered():
    rng = np.random.default_rng(3)
    box = np.array([0, 0, 10, 5], np.float32)
    for _ in range(500):
        b = noisy_box(box, rng, 0.5, 20, 32)
        assert 0 <= b[0] <= b[2] <= 31 and 0 <= b[1] <= b[3] <= 31


def test_schedule_has_11_passes_two_without_points_one_last():
    positions = set()
    for seed in range(200):
        plan = make_schedule(8, 2, np.random.default_rng(seed))
        assert len(plan) == 11 and plan[0] == FIRST
        assert plan.count(CLICK) == 8 and plan.count(NO_POINT) == 2
        assert plan[-1] == NO_POINT
        positions.add(plan.index(NO_POINT))
    assert positions == set(range(1, 9))  # the inserted one lands anywhere among the clicks


def _batch(size: int, n: int = 4) -> torch.Tensor:
    gt = torch.zeros(n, 1, size, size)
    for i in range(n):
        gt[i, 0, 20 + i : 70 + i, 30 : 80 - i] = 1
    return gt


class _Spy:
    """Wraps a module's forward to record its keyword arguments."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        self.module = module
        self.forward = module.forward
        module.forward = self

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        self.calls.append({**kwargs, "out": out})
        return out


def test_one_encoder_pass_eleven_decoder_passes_and_logits_fed_back(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    enc, pe, dec = _Spy(model.image_encoder), _Spy(model.prompt_encoder), _Spy(model.mask_decoder)
    step = InteractiveStep(model, SamLoss(), SimConfig(), seed=0)
    images = torch.rand(4, 3, 128, 128)
    loss, stats = step(_batch(128), torch.arange(4), step=5, images=images)
    assert loss.requires_grad and stats["passes"] == 11
    assert len(enc.calls) == 0 or True  # forward() spied below via call count
    # the encoder ran once: called through __call__ -> forward exactly once
    assert len(enc.calls) == 1
    per_iter = {}
    for call in dec.calls:  # one decoder call per multimask group and iteration
        per_iter.setdefault(id(call["sparse_prompt_embeddings"]), call)
    assert 11 <= len(dec.calls) <= 12  # 11 iterations; the first may split point/box groups
    # mask prompts: absent on the first iteration, then the previous selected LOGITS
    masks = [c.get("masks") for c in pe.calls]
    assert all(m is None for m in masks[: 2 if len(dec.calls) == 12 else 1])
    fed = [m for m in masks if m is not None]
    assert fed, "no mask prompt was ever fed back"
    for m in fed:
        vals = m.unique()
        assert not m.requires_grad
        assert vals.numel() > 2, "a binary mask was fed back instead of logits"


def test_mask_prompt_is_previous_selected_logits(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    pe, dec = _Spy(model.prompt_encoder), _Spy(model.mask_decoder)
    gt = _batch(128, 2)
    with torch.no_grad():
        emb = model.image_encoder(torch.rand(2, 3, 128, 128))
    sim = SimConfig(point_prob=0.0, multimask="never")  # boxes only: one decoder call per iteration
    simulate_train(model, emb, gt, SamLoss(), sim, seed=0, step=0, uids=[0, 1])
    assert len(dec.calls) == 11
    for i in range(10):
        logits = dec.calls[i]["out"][0]
        fed = pe.calls[i + 1]["masks"]
        torch.testing.assert_close(fed, logits.detach())


def test_multimask_passes_on_the_highest_predicted_iou_mask():
    class FakeDecoder(torch.nn.Module):
        def forward(self, **kw):
            b = kw["sparse_prompt_embeddings"].shape[0]
            logits = torch.arange(3.0).view(1, 3, 1, 1).expand(b, 3, 4, 4).clone()
            iou = torch.tensor([[0.2, 0.9, 0.1], [0.7, 0.1, 0.3]])[:b]
            return (logits, iou) if kw["multimask_output"] else (logits[:, :1], iou[:, :1])

    class FakePE(torch.nn.Module):
        def get_dense_pe(self):
            return torch.zeros(1, 1, 1, 1)

    model = torch.nn.Module()
    model.mask_decoder, model.prompt_encoder = FakeDecoder(), FakePE()
    sel, _ = decode_step(
        model,
        torch.zeros(2, 1, 1, 1),
        torch.zeros(2, 2, 1),
        torch.zeros(2, 1, 1, 1),
        torch.tensor([True, True]),
        torch.zeros(2, 1, 4, 4, dtype=torch.bool),
        None,
    )
    assert sel[0].unique().item() == 1.0  # mask 1 has IoU 0.9
    assert sel[1].unique().item() == 0.0  # mask 0 has IoU 0.7


def test_mask_box_is_tight_inclusive():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    np.testing.assert_array_equal(mask_box(m), [3, 2, 7, 4])
