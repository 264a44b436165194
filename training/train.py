"""Fine-tune SAM / MedSAM / LiteMedSAM on CT/MRI with SAM's interactive simulation.

Usage::

    python -m training.train --config training/configs/lite_medsam_1gpu.yaml key=value ...
    torchrun --nproc_per_node 8 -m training.train --config training/configs/medsam_vit_b_8gpu.yaml

Overrides are ``section.key=value`` (or ``--section.key value``). The run folder
(``run.run_dir``) receives ``config.yaml``, ``split.json``, ``skipped_cases.json``,
``metrics.jsonl``, ``tensorboard/`` and ``checkpoints/``. ``run.resume=auto`` continues
from the latest resume state of the run folder.
"""

from __future__ import annotations

import json
import logging
import sys

import torch.distributed as dist

from .config import load_config, normalise_flags
from .run_setup import find_cases, micro_batches, prepare_data, setup_distributed
from .trainer import Trainer, capabilities

__all__ = [
    "Trainer", "capabilities", "find_cases", "main", "micro_batches", "prepare_data",
    "setup_distributed",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(config_path, normalise_flags(argv))
    trainer = Trainer(cfg)
    trainer.resume()
    summary = trainer.fit()
    if trainer.rank == 0:
        print(json.dumps(summary, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
