"""Text prompts in training: a label's name becomes the text prompt of its objects.

``model.text_encoder`` (e.g. ``minilm``) names the text encoder (:mod:`napari_sam_med.text`);
the label names come from ``dataset.json`` (MSD sources) or ``data.label_names``. Each name is
encoded once; a batch's text prompts are looked up by label value. A model without text
parameters (every official checkpoint) gets them added here: a fresh ``text_proj`` and
``text_embed`` in the prompt encoder, the official weights unchanged. Checkpoints then record
``text_encoder`` and ``text_dim`` so that inference uses the same encoder.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("training")


def add_text_prompt(model: nn.Module, text_dim: int) -> None:
    """Give ``model``'s prompt encoder text parameters of width ``text_dim`` (in place).

    A model that already has them must have the same width.

    Raises:
        ValueError: the model's text width differs from ``text_dim``.
    """
    pe = model.prompt_encoder
    current = getattr(pe, "text_dim", None)
    if current is not None:
        if int(current) != int(text_dim):
            raise ValueError(
                f"the model's text prompt takes {current}-d embeddings but the text encoder gives "
                f"{text_dim}-d; use the encoder it was trained with"
            )
        return
    weight = pe.not_a_point_embed.weight
    pe.text_dim = int(text_dim)
    pe.text_proj = nn.Linear(text_dim, pe.embed_dim).to(weight.device, weight.dtype)
    pe.text_embed = nn.Embedding(1, pe.embed_dim).to(weight.device, weight.dtype)
    pe.text_proj.requires_grad_(True)
    pe.text_embed.requires_grad_(True)
    model.config = dataclasses.replace(model.config, text_dim=int(text_dim))
    logger.info("added a %d-d text prompt to the prompt encoder (new, trainable)", text_dim)


def label_names(data_cfg: Any) -> dict[int, str]:
    """``{label value: name}`` from ``data.label_names``, else the MSD ``dataset.json``."""
    names: dict[int, str] = {}
    if data_cfg.source == "msd":
        from napari_sam_med.volume.datasets import read_msd

        names = dict(read_msd(data_cfg.path, require_labels=False)[1])
    for key, value in (data_cfg.label_names or {}).items():
        names[int(key)] = str(value)
    return names


class TextTable:
    """Embeddings of the label names, looked up per sample.

    Args:
        encoder: a :class:`napari_sam_med.text.TextEncoder`.
        names: ``{label value: name}``.
        values: label values that will be asked for (each must have a name).

    Raises:
        ValueError: a label value without a name (names the value and how to give one).
    """

    def __init__(self, encoder: Any, names: dict[int, str], values: list[int]) -> None:
        missing = sorted(set(values) - set(names))
        if missing:
            raise ValueError(
                f"text prompts need a name for every label value; missing {missing}. Give "
                "data.label_names (e.g. data.label_names={1: sarcoma}) or a dataset.json "
                "'labels' entry"
            )
        self.encoder = encoder
        self.names = {int(v): names[int(v)] for v in sorted(set(values))}
        vectors = encoder.encode(list(self.names.values()))
        self.vectors = {v: vectors[i] for i, v in enumerate(self.names)}

    def __call__(self, labels: torch.Tensor | list[int], device: torch.device) -> torch.Tensor:
        """``(B, D)`` float32 embeddings of the batch's label names on ``device``."""
        values = [int(v) for v in (labels.tolist() if torch.is_tensor(labels) else labels)]
        return torch.stack([self.vectors[v] for v in values]).to(device, torch.float32)

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint records so that inference loads the same encoder."""
        meta: dict[str, Any] = {
            "text_encoder": self.encoder.name,
            "text_dim": int(self.encoder.dim),
            "text_labels": {str(k): v for k, v in self.names.items()},
        }
        path = getattr(self.encoder, "path", None)
        if path:
            meta["text_encoder_path"] = str(path)
        return meta


def build_text_table(cfg: Any, model: nn.Module, label_values: list[int]) -> TextTable | None:
    """The run's :class:`TextTable` (and text parameters on ``model``), or None without text."""
    if not cfg.model.text_encoder:
        if cfg.sim.text_prob > 0:
            raise ValueError(
                f"sim.text_prob={cfg.sim.text_prob} needs model.text_encoder (e.g. minilm)"
            )
        return None
    from napari_sam_med.text import load_text_encoder

    encoder = load_text_encoder(cfg.model.text_encoder)
    add_text_prompt(model, encoder.dim)
    return TextTable(encoder, label_names(cfg.data), label_values)
