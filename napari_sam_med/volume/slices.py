"""A volume seen by a model: lazily normalised slices, cached embeddings, 2D predictions.

:class:`SliceSegmenter` is the bridge between a ``(z, y, x)`` volume and the 2D predictor.
It maps each needed slice with the volume-wide intensity range, embeds it only when asked
(through :class:`~napari_sam_med.volume.cache.EmbeddingCache`), and predicts masks from
prompts in ``(x, y)`` pixels of that slice. It knows nothing of GUIs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..capabilities import DEFAULT_ENGINE_RULES, qc_limits
from ..modeling import PromptModel
from ..predictor import SamPredictor
from ..preprocessing import (
    ImageGeometry,
    apply_intensity,
    get_preset,
    intensity_range,
    prepare_image,
)
from .cache import EmbeddingCache, array_hash, encoder_weights_id
from .prompt import SlicePrompt

logger = logging.getLogger(__name__)

# LiteMedSAM's QC limits: those of a prediction whose model is not known (painted, read back).
QC_LIMITS = (
    float(DEFAULT_ENGINE_RULES["qc_min_iou"]),
    float(DEFAULT_ENGINE_RULES["qc_min_stability"]),
)


@dataclass
class Candidates:
    """The ambiguity masks of one ``multimask`` prediction: ``masks`` ``(K, H, W)`` bool,
    ``ious`` (K predicted IoUs), ``logits`` ``(K, S, S)``."""

    masks: np.ndarray
    ious: list[float]
    logits: np.ndarray


@dataclass
class SlicePrediction:
    """One slice's result.

    Attributes:
        z: slice index along the segmentation axis.
        mask: ``(H, W)`` bool mask at the slice's full size.
        logits: ``(S, S)`` float32 low-res logits (the next mask prompt).
        iou: predicted IoU of the chosen mask.
        stability: stability score of the chosen mask (logit offset 1.0).
        source: what produced it (``"box"``, ``"points"``, ``"propagated"``, ``"correction"``...).
        prompt: the prompt that was used.
        candidates: of a ``multimask`` prediction, all masks (see :class:`Candidates`).
        qc_limits: ``(min IoU, min stability)`` of the model that made it, below which the QC
            trace flags the slice (:func:`napari_sam_med.capabilities.qc_limits`).
    """

    z: int
    mask: np.ndarray
    logits: np.ndarray
    iou: float
    stability: float
    source: str
    prompt: SlicePrompt = field(default_factory=SlicePrompt)
    candidates: Candidates | None = None
    qc_limits: tuple[float, float] = QC_LIMITS

    @property
    def area(self) -> int:
        """Mask area in pixels."""
        return int(self.mask.sum())

    @property
    def weak(self) -> bool:
        """Whether the QC trace flags this slice (predicted IoU or stability below the
        model's QC limits)."""
        min_iou, min_stability = self.qc_limits
        return bool(self.iou < min_iou or self.stability < min_stability)


class SliceSegmenter:
    """Embeds slices of one volume on demand and predicts 2D masks on them.

    Args:
        model: a model from ``build_sam``.
        volume: ``(Z, H, W)`` raw array (HU for CT, arbitrary units for MR), or ``(H, W)`` /
            ``(H, W, 3)`` for a 2D image.
        preset: intensity preset name (see ``preprocessing.PRESETS``).
        cache: an :class:`EmbeddingCache`; a private in-memory one when None.
        axis: the slicing axis of ``volume`` (0 = axial for a ``(z, y, x)`` array).
        spacing: voxel size ``(sx, sy, sz)`` in ITK ``(x, y, z)`` order (``Volume.spacing``);
            None means isotropic. Only the ratio of slice gap to pixel size is used.
    """

    def __init__(
        self,
        model: PromptModel,
        volume: np.ndarray,
        preset: str = "minmax",
        cache: EmbeddingCache | None = None,
        axis: int = 0,
        spacing: tuple[float, float, float] | None = None,
    ) -> None:
        arr = np.asarray(volume)
        if arr.ndim == 2:
            arr = arr[None]  # a 2D grey image is a one-slice volume; RGB: pass image[None]
        if arr.ndim not in (3, 4) or (arr.ndim == 4 and (arr.shape[-1] != 3 or axis != 0)):
            raise ValueError(
                f"volume must be (z, y, x) or (z, y, x, 3) RGB with axis 0; got "
                f"shape {np.asarray(volume).shape}, axis {axis}"
            )
        if axis not in (0, 1, 2):
            raise ValueError(f"axis={axis}; expected 0, 1 or 2")
        self.model = model
        self.config = model.config
        self.volume = np.moveaxis(arr, axis, 0) if arr.ndim == 3 else arr
        self.axis = axis
        self.preset = get_preset(preset).name
        self._check_finite()
        self.value_range = intensity_range(self.volume, self.preset)
        self.cache = cache if cache is not None else EmbeddingCache(None)
        self.volume_hash = array_hash(arr)
        self.cache_key = EmbeddingCache.volume_key(
            self.volume_hash, encoder_weights_id(model), self.preset, self.value_range, axis
        )
        self.predictor = SamPredictor(model)
        self.encoder_calls = 0
        self.anisotropy = _anisotropy(spacing, axis)

    def _check_finite(self) -> None:
        if np.issubdtype(self.volume.dtype, np.floating):
            bad = int((~np.isfinite(self.volume)).sum())
            if bad:
                raise ValueError(f"volume contains {bad} NaN/Inf voxels; cannot segment it")

    @property
    def num_slices(self) -> int:
        """Number of slices along the segmentation axis."""
        return int(self.volume.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one slice."""
        return int(self.volume.shape[1]), int(self.volume.shape[2])

    def check_index(self, z: int) -> int:
        """Validate a slice index."""
        zi = int(z)
        if not 0 <= zi < self.num_slices:
            raise ValueError(f"slice index {z} is outside the volume (0..{self.num_slices - 1})")
        return zi

    def slice_image(self, z: int) -> np.ndarray:
        """Slice ``z`` mapped to float32 ``[0, 255]`` with the volume-wide range."""
        return apply_intensity(self.volume[self.check_index(z)], self.preset, self.value_range)

    def _emb_shape(self) -> tuple[int, int, int, int]:
        s = self.config.image_embedding_size
        return (1, self.config.embed_dim, s, s)

    def embedding(self, z: int) -> tuple[torch.Tensor, ImageGeometry]:
        """The ``(1, C, h, w)`` embedding of slice ``z`` (computed once, then cached)."""
        zi = self.check_index(z)
        geom = self.predictor.geometry_for(self.slice_shape)
        emb = self.cache.get(self.cache_key, zi, self._emb_shape())
        if emb is None:
            x, geom = prepare_image(self.slice_image(zi), self.config, self.predictor.device)
            with torch.inference_mode():
                emb = self.model.encode_image(x)
            self.encoder_calls += 1
            self.cache.put(self.cache_key, zi, emb)
        return emb, geom

    def is_cached(self, z: int) -> bool:
        """Whether slice ``z``'s embedding is already in the cache."""
        return self.cache.contains(self.cache_key, int(z))

    def precompute(self, slices: list[int] | None = None) -> Iterator[tuple[int, int, int]]:
        """Fill the cache; yields ``(done, total, z)`` after each slice (cancel by stopping)."""
        todo = (
            list(range(self.num_slices))
            if slices is None
            else [self.check_index(z) for z in slices]
        )
        for i, z in enumerate(todo):
            if not self.is_cached(z):
                self.embedding(z)
            yield i + 1, len(todo), z

    def predict(
        self,
        z: int,
        prompt: SlicePrompt | None = None,
        *,
        box: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        source: str = "prompt",
        multimask: bool = False,
        text: str | torch.Tensor | np.ndarray | None = None,
    ) -> SlicePrediction:
        """Predict slice ``z`` from a prompt in ``(x, y)`` pixels of the slice.

        ``prompt`` is a :class:`SlicePrompt`; ``box``/``points``/``labels``/``text`` build
        one instead (a text may also be a ``(T,)`` embedding, for models trained with text).
        ``mask_input`` is a ``(1, S, S)`` low-res logits prompt.

        With ``multimask`` the candidate with the highest predicted IoU is returned and all
        of them are attached as :attr:`SlicePrediction.candidates`; :func:`choose_candidate`
        picks another one.
        """
        if prompt is None:
            words = text if isinstance(text, str) else None
            prompt = SlicePrompt.from_arrays(box, points, labels, words)
        if text is None or isinstance(text, str):
            text = prompt.text
        box, pts, lab = prompt.arrays()
        emb, geom = self.embedding(z)
        self.predictor.set_embedding(emb, geom)
        masks, ious, low = self.predictor.predict(
            point_coords=pts,
            point_labels=lab,
            box=box,
            mask_input=mask_input,
            multimask_output=multimask,
            return_logits=True,
            text=text,
        )
        best = int(np.argmax(ious))
        logits = low[best]
        cands = Candidates(masks > 0, ious.tolist(), low) if multimask else None
        return SlicePrediction(
            int(z), masks[best] > 0, logits, float(ious[best]), _stability(logits), source,
            prompt.replace(edited_box=None, box3d=None), cands, qc_limits(self.model),
        )  # fmt: skip


def choose_candidate(pred: SlicePrediction, index: int) -> SlicePrediction:
    """The same prediction with candidate ``index`` (of a ``multimask`` prediction) chosen."""
    cands = pred.candidates
    if cands is None:
        raise ValueError("this prediction has no candidates; predict with multimask=True")
    logits = cands.logits[index]
    return SlicePrediction(
        pred.z,
        cands.masks[index].copy(),
        logits,
        float(cands.ious[index]),
        _stability(logits),
        pred.source,
        pred.prompt,
        qc_limits=pred.qc_limits,
    )


def _anisotropy(spacing: tuple[float, float, float] | None, axis: int) -> float:
    """Slice gap over in-plane pixel size along ``axis`` of a ``(z, y, x)`` array."""
    if spacing is None:
        return 1.0
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (sx, sy, sz); got {spacing}")
    zyx = sp[::-1]
    in_plane = np.delete(zyx, axis)
    return float(zyx[axis] / in_plane.mean())


def _stability(logits: np.ndarray, offset: float = 1.0) -> float:
    hi = int((logits > offset).sum())
    lo = int((logits > -offset).sum())
    return 1.0 if lo == 0 else hi / lo
