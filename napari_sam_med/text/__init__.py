"""Text prompts: pluggable text encoders (strings -> L2-normalised embeddings).

encoder = load_text_encoder()            # "minilm": 384-d, offline, napari-sam-med[text]
vectors = encoder.encode(["liver tumour"])   # (1, 384) float32 CPU
encoder = text_encoder_from_metadata(model.checkpoint_metadata)  # what a model was trained with
"""

from __future__ import annotations

from .encoders import (
    DEFAULT_TEXT_ENCODER,
    TEXT_INSTALL_HINT,
    CachedTextEncoder,
    TextEncoder,
    available_text_encoders,
    load_text_encoder,
    register_text_encoder,
    text_encoder_from_metadata,
)

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "TEXT_INSTALL_HINT",
    "CachedTextEncoder",
    "TextEncoder",
    "available_text_encoders",
    "load_text_encoder",
    "register_text_encoder",
    "text_encoder_from_metadata",
]
