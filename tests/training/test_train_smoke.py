"""End-to-end smoke runs of training/train.py on the `tiny` model (CPU, seconds)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam_med.build import build_sam
from napari_sam_med.predictor import SamPredictor
from training.config import load_config
from training.train import Trainer, micro_batches

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "smoke_tiny_cpu.yaml"


def _run(overrides: list[str]) -> tuple[Trainer, dict]:
    trainer = Trainer(load_config(CONFIG, overrides))
    trainer.resume()
    return trainer, trainer.fit()


def _fast(run_dir: Path, data: Path, steps: int) -> list[str]:
    return [
        f"run.run_dir={run_dir}",
        f"data.path={data}",
        f"run.steps={steps}",
        "data.val_fraction=0.25",
        "data.val_slices_per_case=2",
        "data.samples_per_epoch=32",
        "optim.batch_size=2",
        "run.val_at_start=false",
        "data.cache=memory",
    ]


def _falls(history: list[float]) -> bool:
    return float(np.mean(history[-5:])) < 0.8 * float(np.mean(history[:5]))


@pytest.mark.slow
def test_smoke_loss_falls_and_checkpoint_loads(tmp_path, synthetic_dataset):
    _, summary = _run(_fast(tmp_path / "run", synthetic_dataset, 30))
    assert summary["steps"] == 30 and _falls(summary["history"]), summary["history"]
    run = tmp_path / "run"
    for name in ("config.yaml", "split.json", "metrics.jsonl", "skipped_cases.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train_patients"]) & set(split["val_patients"])
    ckpt = run / "checkpoints" / "step_0000030.pth"
    model = build_sam(ckpt, device="cpu")
    assert model.checkpoint_metadata["training"]["step"] == 30
    assert model.checkpoint_metadata["training"]["click_trained"] is True
    predictor = SamPredictor(model)
    predictor.set_image(np.random.default_rng(0).uniform(0, 255, (48, 48)).astype(np.float32))
    masks, scores, _ = predictor.predict(box=np.array([10, 10, 30, 30]))
    assert masks.shape[-2:] == (48, 48) and np.isfinite(scores).all()
    assert (run / "checkpoints" / "best.pth").is_file()


@pytest.mark.slow
def test_checkpoint_works_with_the_cli(tmp_path, synthetic_dataset):
    if importlib.util.find_spec("napari_sam_med.cli") is None:
        pytest.skip("napari_sam_med/cli.py does not exist yet; build_sam loading is tested above")
    from napari_sam_med import cli

    _run(_fast(tmp_path / "run", synthetic_dataset, 2))
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002.pth"
    out = tmp_path / "seg.nii.gz"
    code = cli.main([
        "segment", str(synthetic_dataset / "P0" / "CT_image.nii.gz"), "--model", str(ckpt),
        "--device", "cpu", "--box3d", "10", "10", "2", "40", "40", "9", "-o", str(out),
        "--no-progress", "--no-disk-cache",
    ])  # fmt: skip
    assert code == 0 and out.is_file()


@pytest.mark.slow
@pytest.mark.shared_data
def test_smoke_on_dev_data(tmp_path, shared_data):
    data = tmp_path / "ibsi"
    data.mkdir()
    for patient in ("STS_001", "STS_002", "STS_003"):  # symlinks: never copy the dev data
        (data / patient).symlink_to(shared_data / "ibsi_sts" / patient)
    _, summary = _run(_fast(tmp_path / "run", data, 30) + ["data.val_fraction=0.34"])
    assert _falls(summary["history"]), summary["history"]
    build_sam(tmp_path / "run" / "checkpoints" / "step_0000030.pth", device="cpu")


@pytest.mark.slow
def test_resume_continues_the_identical_loss_curve(tmp_path, synthetic_dataset):
    full = _fast(tmp_path / "a", synthetic_dataset, 8) + [
        "run.ckpt_every=4",
        "optim.accumulation=2",
        "run.val_every=4",
    ]
    _, whole = _run(full)
    part = tmp_path / "b" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "resume_0000004.pt", part)
    resumed_overrides = [o.replace(str(tmp_path / "a"), str(tmp_path / "b")) for o in full]
    trainer, resumed = _run(resumed_overrides + ["run.resume=auto"])
    assert trainer.step == 8
    assert resumed["history"][:4] == whole["history"][:4]
    assert resumed["history"][4:] == whole["history"][4:]  # bit-identical continuation
    a = torch.load(tmp_path / "a" / "checkpoints" / "resume_0000008.pt", weights_only=True)
    b = torch.load(part / "resume_0000008.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_global_batches_do_not_depend_on_the_number_of_ranks():
    one = micro_batches(40, 4, 1, 0, seed=3, start=0)
    two = [micro_batches(40, 2, 2, r, seed=3, start=0) for r in range(2)]
    for _ in range(25):  # crosses epoch boundaries (10 micro-batches per epoch)
        e1, b1 = next(one)
        parts = [next(g) for g in two]
        assert {e for e, _ in parts} == {e1}
        assert sorted(b1) == sorted(parts[0][1] + parts[1][1])
    resumed = micro_batches(40, 4, 1, 0, seed=3, start=13)
    fresh = micro_batches(40, 4, 1, 0, seed=3, start=0)
    for _ in range(13):
        next(fresh)
    assert next(resumed) == next(fresh)


@pytest.mark.slow
def test_bf16_amp_run_on_cpu(tmp_path, synthetic_dataset):
    """run.amp=bf16 (the GPU AMP code path) trains on the CPU and writes a loadable model."""
    trainer, summary = _run(_fast(tmp_path / "run", synthetic_dataset, 3) + ["run.amp=bf16"])
    assert trainer.dtype == torch.bfloat16 and trainer.scaler is None
    assert summary["steps"] == 3 and all(np.isfinite(summary["history"]))
    model = build_sam(tmp_path / "run" / "checkpoints" / "step_0000003.pth", device="cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
