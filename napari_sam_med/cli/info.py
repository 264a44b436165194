"""``sam-med info``: models, devices, torch version and the embedding cache location."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``info`` (with ``parents``: the common options)."""
    i = sub.add_parser("info", parents=parents, help="models, devices, cache location")
    i.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """``sam-med info``: models, devices, torch version and the cache location."""
    import torch

    from .. import __version__
    from ..build import CheckpointError, locate_lite_medsam_weights
    from ..config import REGISTRY
    from ..device import resolve_device
    from ..volume.cache import default_cache_dir

    print(
        f"napari-sam-med {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}"
    )
    print("models:")
    for name, cfg in REGISTRY.items():
        note = ""
        if name == "lite_medsam":
            try:
                note = f"weights {locate_lite_medsam_weights(verify=False)}"
            except CheckpointError as exc:
                note = f"weights missing ({str(exc).splitlines()[0]})"
        elif name == "tiny":
            note = "small random model for tests"
        print(f"  {name:13s} {cfg.encoder:8s} input {cfg.img_size:4d}  {note}".rstrip())
    print("devices:")
    print("  cpu")
    for k in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        print(f"  cuda:{k} {torch.cuda.get_device_name(k)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        print("  mps")
    print(f"  auto -> {resolve_device('auto')}")
    cache = default_cache_dir()
    files = list((cache / "embeddings").rglob("*.npz")) if cache.is_dir() else []
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"cache: {cache} ({len(files)} slice embeddings, {size:.1f} MiB)")
    print("  set NAPARI_SAM_MED_CACHE to move it")
    return 0
