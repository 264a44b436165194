"""Per-slice image-embedding cache: lazy, in memory with a size cap, and on disk.

Keys combine the volume's content hash, the image encoder's id (its configuration, the input
normalisation and its weights, see :func:`encoder_weights_id`: models that share an encoder,
such as LiteMedSAM and checkpoints fine-tuned with a frozen encoder, share embeddings), the
intensity preset (and its value range), the slicing axis and the slice index. (Entries written
under the older whole-model key are simply never looked up again.) On disk every slice is
its own ``.npz`` (float16, zip CRC-checked), written atomically; an entry that fails to
load, has the wrong shape or holds non-finite values is recomputed, never trusted.

The cache folder is ``$NAPARI_SAM_MED_CACHE`` or ``$XDG_CACHE_HOME/napari-sam-med``
(``~/.cache/napari-sam-med`` by default).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..modeling import Sam
from ..outputs import replace_atomic

if TYPE_CHECKING:
    from ..config import SamConfig
    from ..modeling import PromptModel

logger = logging.getLogger(__name__)

_FileKey = tuple[str, int, int]  # a checkpoint file's absolute path, size and mtime (ns)
_WEIGHTS_HASHES: dict[_FileKey, str] = {}
_ENCODER_HASHES: dict[_FileKey, str] = {}


def default_cache_dir() -> Path:
    """The user cache folder (not created here)."""
    env = os.environ.get("NAPARI_SAM_MED_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-sam-med"


def array_hash(array: np.ndarray) -> str:
    """Content hash of an array (dtype, shape and bytes)."""
    arr = np.ascontiguousarray(array)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.data.cast("B"))  # ``arr.data`` is ``memoryview(arr)``
    return h.hexdigest()


def model_weights_id(model: PromptModel) -> str:
    """A stable id of a model's configuration and weights.

    Uses the checkpoint file's SHA-256 when the model came from a file (memoised by path,
    size and mtime), otherwise hashes the state dict itself.
    """
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "name", "model")
    if getattr(model, "encoder_autocast", None) is not None:  # fast mode: other embeddings
        name = f"{name}-{str(model.encoder_autocast).removeprefix('torch.')}"
    if getattr(model, "encoder_int8", False):  # int8 mode: other embeddings again
        name = f"{name}-int8"
    norm = getattr(cfg, "normalization", "")
    path = getattr(model, "checkpoint_path", None)
    if path and os.path.isfile(path):
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in _WEIGHTS_HASHES:
            sha = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(block)
            _WEIGHTS_HASHES[key] = sha.hexdigest()[:16]
        return f"{name}-{norm}-{_WEIGHTS_HASHES[key]}"
    if not isinstance(model, Sam):  # another runtime (ONNX) is always loaded from its file
        raise ValueError(f"{type(model).__name__}: its weights file {path!r} is gone; cannot id it")
    h = hashlib.blake2b(digest_size=8)
    for k, v in model.image_encoder.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
        h.update(str(float(v.float().sum())).encode())
    return f"{name}-{norm}-rand{h.hexdigest()}"


def encoder_weights_id(model: PromptModel) -> str:
    """A stable id of what a slice embedding depends on: the image encoder's configuration
    and weights and the input normalisation, not the prompt encoder or the mask decoder.

    The weights hash is memoised per checkpoint file (path, size and mtime), as in
    :func:`model_weights_id`; a model without a file is hashed each time.
    """
    cfg = getattr(model, "config", None)
    if not isinstance(model, Sam):  # another runtime (ONNX): keyed by its own file
        return f"enc-{model_weights_id(model)}"
    autocast = getattr(model, "encoder_autocast", None)  # fast mode: other embeddings
    described = {
        "encoder": getattr(cfg, "encoder", type(model.image_encoder).__name__),
        "autocast": None if autocast is None else str(autocast),
        "settings": _encoder_settings(cfg),
        "img_size": getattr(cfg, "img_size", None),
        "normalization": getattr(cfg, "normalization", ""),
        "pixel_mean": list(getattr(cfg, "pixel_mean", ())),
        "pixel_std": list(getattr(cfg, "pixel_std", ())),
    }
    if getattr(model, "encoder_int8", False):  # only then: fp32/bf16 ids stay as they were
        described["quantized"] = "int8"
    arch = json.dumps(described, sort_keys=True, default=list)
    path = getattr(model, "checkpoint_path", None)
    key: _FileKey | None = None
    if path and os.path.isfile(path):
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    weights = _ENCODER_HASHES.get(key) if key is not None else None
    if weights is None:
        weights = _state_dict_hash(model.image_encoder)
        if key is not None:
            _ENCODER_HASHES[key] = weights
    h = hashlib.blake2b(digest_size=12)
    h.update(arch.encode())
    h.update(weights.encode())
    return f"enc-{getattr(cfg, 'encoder', 'model')}-{h.hexdigest()}"


def _encoder_settings(cfg: SamConfig | None) -> dict[str, Any] | None:
    enc = getattr(cfg, "encoder", None)
    sub = getattr(cfg, "vit" if enc == "vit" else "tiny_vit", None)
    return asdict(sub) if is_dataclass(sub) and not isinstance(sub, type) else None


def _state_dict_hash(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes); BatchNorm
    step counters are left out (they never change an output)."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in sorted(module.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(value.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """In-memory LRU (byte-capped) in front of an optional on-disk store.

    Args:
        cache_dir: root folder for the disk store; ``None`` keeps embeddings in memory only.
        memory_bytes: cap of the in-memory LRU (default 512 MiB).
    """

    def __init__(
        self, cache_dir: str | os.PathLike | None = None, memory_bytes: int = 512 * 2**20
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory_bytes = int(memory_bytes)
        self._mem: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._mem_used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.disk_hits = self.rejected = 0

    @staticmethod
    def volume_key(
        volume_hash: str, model_id: str, preset: str, value_range: tuple[float, float], axis: int
    ) -> str:
        """The key of one volume's embeddings (everything except the slice index)."""
        text = json.dumps(
            [volume_hash, model_id, preset, [round(float(v), 6) for v in value_range], int(axis)]
        )
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def _path(self, key: str, index: int) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / "embeddings" / key / f"slice_{index:05d}.npz"

    def get(self, key: str, index: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        """A cached ``shape`` float32 embedding, or None (a bad disk entry is discarded)."""
        with self._lock:
            t = self._mem.get((key, index))
            if t is not None:
                self._mem.move_to_end((key, index))
                self.hits += 1
                return t
        path = self._path(key, index)
        if path is not None and path.is_file():
            arr = self._read(path, shape)
            if arr is not None:
                t = torch.from_numpy(arr.astype(np.float32))
                self._remember(key, index, t)
                self.disk_hits += 1
                return t
        self.misses += 1
        return None

    def _read(self, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                arr = data["embedding"]
            if tuple(arr.shape) != tuple(shape) or not np.isfinite(arr).all():
                raise ValueError(f"shape {arr.shape} (expected {shape}) or non-finite values")
            return arr
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            logger.warning("discarding corrupt embedding cache entry %s: %s", path, exc)
            self.rejected += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def put(self, key: str, index: int, embedding: torch.Tensor) -> None:
        """Store a float embedding (memory always; disk when configured, atomically).

        With a disk store the embedding is rounded to float16 in memory too, so that the run
        that computes it answers exactly as every later run that reads it back (a cold and a
        warm cache give the same masks, the same stop decisions)."""
        t = embedding.detach().float().cpu()
        path = self._path(key, index)
        if path is not None:
            t = t.half().float()
        self._remember(key, index, t)
        if path is None:
            return
        try:
            replace_atomic(path, lambda fh: np.savez(fh, embedding=t.numpy().astype(np.float16)))
        except (OSError, ValueError) as exc:  # a full or read-only disk must not stop segmentation
            logger.warning("could not write embedding cache %s: %s", path, exc)

    def _remember(self, key: str, index: int, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        with self._lock:
            if (key, index) in self._mem:
                return
            self._mem[(key, index)] = t
            self._mem_used += size
            while self._mem_used > self.memory_bytes and len(self._mem) > 1:
                _, old = self._mem.popitem(last=False)
                self._mem_used -= old.numel() * old.element_size()

    def contains(self, key: str, index: int) -> bool:
        """Whether an entry exists in memory or on disk (without validating it)."""
        if (key, index) in self._mem:
            return True
        path = self._path(key, index)
        return path is not None and path.is_file()

    def clear_memory(self) -> None:
        """Drop the in-memory entries (the disk store is kept)."""
        with self._lock:
            self._mem.clear()
            self._mem_used = 0
