"""Text prompts in training: label names as an extra first-prompt type, end to end."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from napari_sam_med.build import build_sam
from napari_sam_med.predictor import SamPredictor
from tests.text_fakes import FAKE_DIM, FAKE_NAME, register_fake
from tests.training.test_train_smoke import CONFIG, _fast
from training.config import SimConfig, load_config
from training.losses import SamLoss
from training.prompts import BOX, POINT, TEXT, encode_groups, first_prompts
from training.simulate import simulate_eval, simulate_train
from training.textprompt import TextTable, add_text_prompt
from training.train import Trainer


def _gt(b: int, size: int = 128) -> torch.Tensor:
    gt = torch.zeros(b, 1, size, size)
    for i in range(b):
        gt[i, 0, size // 4 + i % 5 : 3 * size // 4, size // 8 : 3 * size // 4 - i % 7] = 1
    return gt


@pytest.fixture()
def text_model(tiny_model):
    model = copy.deepcopy(tiny_model)
    add_text_prompt(model, FAKE_DIM)
    return model


def test_add_text_prompt_keeps_official_weights_and_checks_width(tiny_model, text_model):
    before = tiny_model.state_dict()
    after = text_model.state_dict()
    assert set(after) - set(before) == {
        "prompt_encoder.text_proj.weight",
        "prompt_encoder.text_proj.bias",
        "prompt_encoder.text_embed.weight",
    }
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert text_model.config.text_dim == FAKE_DIM
    with pytest.raises(ValueError, match="12-d embeddings but the text encoder gives 7-d"):
        add_text_prompt(text_model, 7)


def test_text_first_prompt_probability_and_token_counts(text_model):
    gt = _gt(64, 64)
    rngs = [np.random.default_rng([0, i]) for i in range(64)]
    text = torch.nn.functional.normalize(torch.randn(64, FAKE_DIM), dim=-1)
    state = first_prompts(gt, rngs, 0.5, 0.1, 20.0, text=text, text_prob=0.5)
    kinds = state.kind.tolist()
    assert 16 <= kinds.count(TEXT) <= 48 and kinds.count(BOX) and kinds.count(POINT)
    # without text the draws are the recipe's own: no text kind at all
    plain = first_prompts(gt, [np.random.default_rng([0, i]) for i in range(64)], 0.5, 0.1, 20.0)
    assert TEXT not in plain.kind.tolist()
    # before any click: text alone is ONE token (as at inference), boxes/points two
    groups = encode_groups(text_model.prompt_encoder, state, None)
    tokens = {sp.shape[1]: idx for idx, sp, _ in groups}
    assert set(tokens) == {1, 2}
    assert set(tokens[1].tolist()) == {i for i, k in enumerate(kinds) if k == TEXT}
    # after a click all kinds give k + 2 tokens and share one decoder call
    state.add_clicks(torch.full((64, 2), 10.0), torch.ones(64, dtype=torch.long))
    groups = encode_groups(text_model.prompt_encoder, state, None)
    assert len(groups) == 1 and groups[0][0] is None and groups[0][1].shape[1] == 3


def test_text_without_embeddings_is_refused():
    with pytest.raises(ValueError, match="text embeddings"):
        first_prompts(_gt(1, 64), None, 0.0, 0.0, 0.0, first="text")


def test_text_simulation_trains_the_text_parameters(text_model):
    sim = dataclasses.replace(SimConfig(), text_prob=1.0)
    text = torch.nn.functional.normalize(torch.randn(2, FAKE_DIM), dim=-1)
    with torch.no_grad():
        emb = text_model.image_encoder(torch.rand(2, 3, 128, 128))
    loss, stats = simulate_train(
        text_model, emb, _gt(2), SamLoss(), sim, seed=0, step=0, uids=[0, 1], text=text
    )
    loss.backward()
    assert stats["passes"] == 11
    assert text_model.prompt_encoder.text_proj.weight.grad.abs().sum() > 0
    dice = simulate_eval(text_model, emb, _gt(2), "text", 1, text=text)
    assert len(dice) == 2 and all(d.shape == (2,) for d in dice)


def test_missing_label_name_is_reported():
    fake = register_fake()
    with pytest.raises(ValueError, match=r"missing \[2\].*data.label_names"):
        TextTable(fake, {1: "sarcoma"}, [1, 2])


@pytest.mark.slow
def test_text_run_checkpoint_answers_text_prompts(tmp_path, synthetic_dataset):
    fake = register_fake()
    overrides = _fast(tmp_path / "run", synthetic_dataset, 4) + [
        f"model.text_encoder={FAKE_NAME}",
        "sim.text_prob=0.5",
        "data.label_names={1: lesion, 2: cyst}",
        "run.val_every=4",
    ]
    trainer = Trainer(load_config(CONFIG, overrides))
    summary = trainer.fit()
    assert summary["steps"] == 4
    assert ["lesion", "cyst"] in fake.calls
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000004.pth"
    model = build_sam(ckpt, device="cpu")
    meta = model.checkpoint_metadata
    assert meta["text_encoder"] == FAKE_NAME and meta["text_dim"] == FAKE_DIM
    assert "dice_text" in meta["training"]["val"] and "dice_point_click1" in meta["training"]["val"]
    predictor = SamPredictor(model)
    predictor.set_image(np.random.default_rng(0).uniform(0, 255, (48, 48)).astype(np.float32))
    masks, scores, _ = predictor.predict(text="lesion", multimask_output=False)
    assert masks.shape[-2:] == (48, 48) and np.isfinite(scores).all()
