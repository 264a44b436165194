"""The compute side of the plugin, free of Qt: a model bound to one image, and its jobs.

:class:`Engine` wraps a :class:`~napari_sam_med.volume.slices.SliceSegmenter` so that several
threads can use it: image embeddings may be computed concurrently (the cache is locked), and
prompt decoding is serialised by a lock because the predictor holds the current embedding.

All prompts here are in SAM order: points ``(x, y)`` pixels of one slice, boxes
``[x0, y0, x1, y1]``. Layers convert to and from napari's ``(z, y, x)`` in ``_layers.py``.

Torch is imported only when an :class:`Engine` is built (in a worker thread), so opening the
widget stays instant.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..volume.prompt import SlicePrompt

if TYPE_CHECKING:
    from ..modeling.protocol import PromptModel

logger = logging.getLogger(__name__)


@dataclass
class Preview:
    """A 2D result on one slice with its ambiguity candidates.

    Attributes:
        z: slice index.
        prompt: the prompt the model saw (user prompt plus any context box), SAM order.
        candidates: ``SlicePrediction`` objects; the three multimask outputs, then (for boxes
            and multi-point prompts) the single-mask output.
        names: a display name per candidate (``"1"``, ``"2"``, ``"3"``, ``"auto"``).
        index: the candidate shown (the default choice, or the user's after cycling).
    """

    z: int
    prompt: SlicePrompt
    candidates: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    index: int = 0

    @property
    def chosen(self) -> Any:
        """The ``SlicePrediction`` currently chosen."""
        return self.candidates[self.index]

    def describe(self) -> str:
        """One line listing the candidates and their predicted IoU, the chosen one marked."""
        parts = []
        for i, (name, c) in enumerate(zip(self.names, self.candidates, strict=True)):
            mark = "*" if i == self.index else " "
            parts.append(f"{mark}{name}: IoU {c.iou:.2f}")
        return "  ".join(parts)


def prepare_image(data: np.ndarray, rgb: bool) -> np.ndarray:
    """An image layer's data as the segmenter's volume.

    Args:
        data: ``(Z, Y, X)`` volume, ``(Y, X)`` grey image or ``(Y, X, 3)`` RGB image.
        rgb: whether the last axis holds colour channels.

    Returns:
        ``(Z, Y, X)`` or ``(1, Y, X, 3)``.
    """
    arr = np.asarray(data)
    if rgb:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"an RGB image must be (Y, X, 3); got shape {arr.shape}")
        return arr[None]
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"image layer has shape {arr.shape}; expected a 2D image (Y, X), an RGB image "
            "(Y, X, 3) or a 3D volume (Z, Y, X). Pick one channel or time point first."
        )
    return arr


def default_preset(data: np.ndarray, rgb: bool, modality: str | None = None) -> str:
    """The intensity preset guessed for an image layer (identity for 8-bit images)."""
    from ..preprocessing import guess_preset

    arr = np.asarray(data)
    if rgb or (arr.dtype == np.uint8 and not modality):
        return "identity"
    return guess_preset(modality, arr)


class Engine:
    """A model bound to one image (volume or 2D) with a shared embedding cache.

    Args:
        model: a model from ``build_sam``.
        image: ``(Z, Y, X)`` or ``(1, Y, X, 3)`` (see :func:`prepare_image`).
        preset: intensity preset name.
        cache_dir: the on-disk embedding cache folder (None keeps it in memory).
        model_info: JSON-friendly description of the model (name, checkpoint), for the log.
        spacing: voxel size ``(sx, sy, sz)`` in mm (ITK order), for anisotropy-aware
            propagation; None means isotropic.
    """

    def __init__(
        self,
        model: PromptModel,
        image: np.ndarray,
        preset: str,
        cache_dir: Any = None,
        model_info: dict[str, Any] | None = None,
        spacing: tuple[float, float, float] | None = None,
    ) -> None:
        from ..volume.cache import EmbeddingCache
        from ..volume.slices import SliceSegmenter

        self.model = model
        self.model_info = dict(model_info or {})
        self.segmenter = SliceSegmenter(
            model, image, preset, cache=EmbeddingCache(cache_dir), spacing=spacing
        )
        self.preset = self.segmenter.preset
        self.lock = threading.RLock()

    @property
    def num_slices(self) -> int:
        """Number of slices (1 for a 2D image)."""
        return self.segmenter.num_slices

    def is_embedded(self, z: int) -> bool:
        """Whether slice ``z`` has an embedding in the cache."""
        return self.segmenter.is_cached(z)

    def embed(self, z: int) -> None:
        """Compute (or load) the embedding of slice ``z``."""
        self.segmenter.embedding(z)

    def precompute(self, slices: list[int] | None = None) -> Iterator[tuple[int, int, int]]:
        """Fill the cache; yields ``(done, total, z)`` per slice."""
        yield from self.segmenter.precompute(slices)

    def predict(self, z: int, prompt: SlicePrompt | None = None, **kwargs: Any) -> Any:
        """``SliceSegmenter.predict`` under the decoding lock."""
        with self.lock:
            return self.segmenter.predict(z, prompt, **kwargs)

    def preview(self, z: int, prompt: SlicePrompt | dict[str, Any]) -> Preview:
        """Predict slice ``z`` from a prompt, with the three ambiguity candidates."""
        steps = self.preview_steps(z, prompt)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    def preview_steps(self, z: int, prompt: SlicePrompt | dict[str, Any]) -> Iterator[Preview]:
        """Like :meth:`preview`, but yields the mask to show first and returns the complete
        :class:`Preview` (with all candidates) afterwards.

        A single point keeps SAM's advice (the candidate of highest predicted IoU, one
        decoder pass). A box or several points default to the single-mask output, which is
        yielded at once; the three ambiguity masks are decoded afterwards and the returned
        preview lists them before the ``auto`` (single-mask) candidate, which stays chosen.
        (The rule lives in ``volume.candidates.candidate_steps``, shared with the replay.)
        """
        from ..volume.candidates import candidate_steps
        from ..volume.prompt import coerce

        prompt, full = coerce(prompt), None
        for preds, names, index in candidate_steps(self.locked(), z, prompt):
            if full is None:
                yield Preview(int(z), prompt, preds, names, index)  # the first mask, at once
            full = Preview(int(z), prompt, preds, names, index)
        return full

    def propagator(self, pins: dict[int, Any]) -> Any:
        """A ``Propagator`` whose key slices use ``pins`` (z -> the mask the user accepted)."""
        from ..volume.propagate import Propagator, pinned

        return Propagator(self.locked(), key_predictor=pinned(pins))

    def locked(self) -> Any:
        """The segmenter with ``predict`` under this engine's decoding lock (for the volume
        engine's functions, which take a ``SliceSegmenter``)."""
        return _LockedSegmenter(self)


class _LockedSegmenter:
    """The engine's segmenter with ``predict`` under the decoding lock."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def predict(self, z: int, prompt: SlicePrompt | None = None, **kwargs: Any) -> Any:
        return self._engine.predict(z, prompt, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine.segmenter, name)
