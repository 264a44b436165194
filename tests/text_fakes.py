"""A tiny deterministic text encoder for tests (no model download, no optional package)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

FAKE_NAME = "fake-test"
FAKE_DIM = 12


class FakeTextEncoder:
    """Each string maps to a fixed random unit vector seeded by its CRC32; counts calls."""

    name = FAKE_NAME
    dim = FAKE_DIM

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(zlib.crc32(t.encode("utf-8")))
            rows.append(torch.randn(self.dim, generator=g))
        out = torch.stack(rows) if rows else torch.zeros((0, self.dim))
        return torch.nn.functional.normalize(out, dim=-1)


def register_fake() -> FakeTextEncoder:
    """Register a fresh fake under ``FAKE_NAME`` and return it (to inspect its calls)."""
    from napari_sam_med.text import register_text_encoder

    fake = FakeTextEncoder()
    register_text_encoder(FAKE_NAME, lambda: fake)
    return fake


def text_checkpoint(path, seed: int = 0):
    """A ``tiny`` model with ``text_dim=FAKE_DIM`` saved with ``text_encoder=FAKE_NAME``."""
    from dataclasses import replace

    from napari_sam_med.build import build_model, save_checkpoint
    from napari_sam_med.config import REGISTRY

    torch.manual_seed(seed)
    model = build_model(replace(REGISTRY["tiny"], text_dim=FAKE_DIM))
    model.config = replace(REGISTRY["tiny"], text_dim=FAKE_DIM, name="tiny_text")
    meta = {"text_encoder": FAKE_NAME, "text_dim": FAKE_DIM}
    return save_checkpoint(model, path, metadata=meta)
