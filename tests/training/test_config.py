"""YAML config loading, overrides and validation (training/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config, normalise_flags, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("mae_")),
    ids=lambda p: p.name,
)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.run.steps >= 0


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("mae_*.yaml")), ids=lambda p: p.name)
def test_shipped_mae_configs_load(path):
    from training.pretrain_mae import load_mae_config

    cfg = load_mae_config(["--config", str(path)])
    assert cfg.steps > 0 and 0 < cfg.mask_ratio < 1
    with pytest.raises(ValueError, match="unknown MAE config keys"):
        load_mae_config(["--config", str(path), "mask_ration=0.5"])


def test_overrides_and_flags_are_parsed_as_yaml(tmp_path):
    args = normalise_flags(["optim.lr=3e-4", "--run.steps", "7", "--data.spacing=[1, 1, 2]"])
    cfg = load_config(CONFIGS / "smoke_tiny_cpu.yaml", args + ["model.checkpoint=null"])
    assert cfg.optim.lr == 3e-4 and cfg.run.steps == 7 and cfg.data.spacing == [1, 1, 2]
    assert cfg.model.checkpoint is None
    saved = save_config(cfg, tmp_path)
    assert load_config(saved).to_dict() == cfg.to_dict()


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ValueError, match="optim.lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="model.trainable"):
        load_config(None, ["model.trainable=encoder"])
    with pytest.raises(ValueError, match="val_fraction"):
        load_config(None, ["data.val_fraction=1.5"])
