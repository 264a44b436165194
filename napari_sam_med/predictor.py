"""SamPredictor: embed one 2D image once, then turn prompts into masks quickly.

Numpy at the edge, torch inside. Prompts are in ``(x, y)`` pixels of the ORIGINAL image;
masks come back at the original size. The image embedding is cached until
:meth:`SamPredictor.reset_image` or the next :meth:`SamPredictor.set_image`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from .errors import PromptError, SamMedError
from .modeling import PromptModel, Sam
from .preprocessing import ImageGeometry, geometry_for, low_res_to_original, prepare_image
from .text import TextEncoder, text_encoder_from_metadata

logger = logging.getLogger(__name__)

MASK_THRESHOLD = 0.0


class SamPredictor:
    """Prompt-to-mask on a single image with a cached embedding.

    Args:
        model: a model from :func:`napari_sam_med.build_sam` (it carries ``model.config``) or
            :func:`napari_sam_med.backends.load_model` (PyTorch or ONNX).
        text_encoder: encoder for ``str`` text prompts. ``None``: the one named by the
            checkpoint's metadata (``text_encoder``), loaded on the first string prompt.
    """

    features: torch.Tensor | None  # the ``(1, C, h, w)`` embedding of the current image
    geometry: ImageGeometry | None  # where the current image sits in the model's input

    def __init__(self, model: PromptModel, text_encoder: TextEncoder | None = None) -> None:
        if not hasattr(model, "config"):
            raise SamMedError("SamPredictor needs a model built by build_sam (it has no .config)")
        self.model = model
        self.config = model.config
        self.text_encoder = text_encoder
        self.reset_image()

    @property
    def device(self) -> torch.device:
        """The device the model's parameters live on."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray) -> None:
        """Compute and cache the embedding of an ``(H, W)`` or ``(H, W, 3)`` image.

        Values should lie in ``[0, 255]`` (use ``preprocessing.apply_intensity`` for CT/MR).

        Raises:
            ValueError: wrong shape, empty image, or NaN/Inf values.
        """
        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
            raise SamMedError(f"image must be (H, W) or (H, W, 3); got shape {arr.shape}")
        if arr.shape[0] < 2 or arr.shape[1] < 2:
            raise SamMedError(f"image is too small: shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise SamMedError(
                f"image contains {int((~np.isfinite(arr)).sum())} NaN/Inf values; cannot embed it"
            )
        x, geom = prepare_image(arr, self.config, self.device)
        with torch.inference_mode():
            emb = self.model.encode_image(x)
        self.set_embedding(emb, geom)

    def set_embedding(self, embedding: torch.Tensor, geometry: ImageGeometry) -> None:
        """Use a precomputed ``(1, C, h, w)`` embedding (e.g. from the volume cache)."""
        c, s = self.config.embed_dim, self.config.image_embedding_size
        if tuple(embedding.shape) != (1, c, s, s):
            raise SamMedError(
                f"embedding must have shape (1, {c}, {s}, {s}); got {tuple(embedding.shape)}"
            )
        self.features = embedding.to(self.device, torch.float32)
        self.geometry = geometry
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The cached ``(1, C, h, w)`` embedding."""
        features, _ = self._require_image()
        return features

    def reset_image(self) -> None:
        """Forget the cached image and embedding."""
        self.features = None
        self.geometry = None
        self.is_image_set = False

    def _require_image(self) -> tuple[torch.Tensor, ImageGeometry]:
        """The current image's embedding and geometry; raises when no image is set."""
        if not self.is_image_set or self.features is None or self.geometry is None:
            raise SamMedError("no image is set: call set_image(image) before predicting")
        return self.features, self.geometry

    # ---------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | Sequence | None = None,
        point_labels: np.ndarray | Sequence | None = None,
        box: np.ndarray | Sequence | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: str | torch.Tensor | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one set of prompts on the current image.

        Args:
            point_coords: ``(N, 2)`` ``(x, y)`` pixels of the original image.
            point_labels: ``(N,)``; 1 foreground, 0 background.
            box: ``(4,)`` ``(x0, y0, x1, y1)`` pixels of the original image.
            mask_input: ``(1, s, s)`` or ``(s, s)`` low-res logits from a previous call
                (``s = 4 * image_embedding_size``, 256 for the public models).
            multimask_output: return the three ambiguity masks instead of one.
            return_logits: return float logits instead of boolean masks.
            text: a text prompt, alone or with points/box: a string (encoded with
                :attr:`text_encoder`) or a ``(T,)`` / ``(1, T)`` embedding used as is. Only
                for models trained with text (``config.text_dim``).

        Returns:
            ``masks (K, H, W)`` bool (or float logits), ``iou_predictions (K,)`` float32 and
            ``low_res_logits (K, s, s)`` float32, with K = 3 or 1.

        Raises:
            ValueError: no image set, empty prompt, wrong shapes, NaNs, prompts outside the
                image, or a text prompt for a model without text support.
        """
        self._require_image()
        text_t = self.encode_text(text) if text is not None else None
        coords_t, labels_t, box_t, mask_t = self._validate_prompts(
            point_coords, point_labels, box, mask_input, has_text=text_t is not None
        )
        masks, iou, low = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits, text=text_t
        )
        return (
            masks[0].cpu().numpy(),
            iou[0].float().cpu().numpy(),
            low[0].float().cpu().numpy(),
        )

    def _validate_prompts(self, point_coords, point_labels, box, mask_input, has_text=False):
        _, geom = self._require_image()
        h, w = geom.original_size
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is None and box is None and mask_input is None and not has_text:
            raise PromptError(
                "empty prompt: give point_coords/point_labels, a box, mask_input or text"
            )
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_coords and point_labels must be given together")
        if point_coords is not None:
            pts, labels = _points_and_labels(point_coords, point_labels)
            if len(pts) == 0 and box is None and mask_input is None and not has_text:
                raise PromptError("empty prompt: point_coords has no points and there is no box")
            _check_inside(pts, w, h, "point_coords point")
            coords_t = torch.as_tensor(geom.coords_to_input(pts), device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int64, device=self.device)[None]
        if box is not None:
            b = _finite_array(box, "box")
            if b.shape not in ((4,), (1, 4), (2, 2)):
                raise PromptError(
                    f"box must be (x0, y0, x1, y1), shape (4,); got shape {b.shape}: "
                    f"{_short(box)}"
                )
            b = b.reshape(-1)
            if b[2] < b[0] or b[3] < b[1]:
                raise PromptError(
                    f"box {b.tolist()} has x1 < x0 or y1 < y0; expected (x0, y0, x1, y1)"
                )
            _check_inside(b.reshape(2, 2), w, h, "box corner")
            box_t = torch.as_tensor(geom.boxes_to_input(b), device=self.device)[None]
        if mask_input is not None:
            m = _finite_array(mask_input, "mask_input")
            s = self.config.mask_input_size
            if m.shape not in ((s, s), (1, s, s)):
                raise PromptError(f"mask_input must be ({s}, {s}) low-res logits; got {m.shape}")
            mask_t = torch.as_tensor(m.reshape(1, 1, s, s), device=self.device)
        return coords_t, labels_t, box_t, mask_t

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts ALREADY in model-input coordinates.

        Use ``self.geometry.coords_to_input`` / ``boxes_to_input`` to transform them.

        Args:
            point_coords: ``(B, N, 2)`` float, or None.
            point_labels: ``(B, N)`` int, or None.
            boxes: ``(B, 4)`` float, or None.
            mask_input: ``(B, 1, s, s)`` low-res logits, or None.
            text: ``(B, T)`` text embeddings (see :meth:`encode_text`), or None.

        Returns:
            ``masks (B, K, H, W)``, ``iou_predictions (B, K)``, ``low_res_logits (B, K, s, s)``.
        """
        features, geometry = self._require_image()
        points: tuple[torch.Tensor, torch.Tensor] | None = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_coords need point_labels ((B, N) int); got None")
            points = (point_coords, point_labels)
        with torch.inference_mode():
            if text is None:
                low, iou = self.model.decode(
                    features,
                    points=points,
                    boxes=boxes,
                    masks=mask_input,
                    multimask_output=multimask_output,
                )
            else:
                low, iou = self._decode_with_text(
                    features, points, boxes, mask_input, text, multimask_output
                )
            masks = low_res_to_original(low, geometry)
        if not return_logits:
            masks = masks > MASK_THRESHOLD
        return masks, iou, low

    def _decode_with_text(
        self,
        features: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Sam.decode has no text argument yet: the same two calls, with the text token
        if not isinstance(self.model, Sam):
            raise PromptError(
                f"text prompts need the PyTorch model; {type(self.model).__name__} has no "
                "text prompt encoder (load the checkpoint or registry name instead)"
            )
        pe = self.model.prompt_encoder
        sparse, dense = pe(points=points, boxes=boxes, masks=masks, text=text.to(self.device))
        return self.model.mask_decoder(
            image_embeddings=features,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    # ------------------------------------------------------------------- text
    @property
    def supports_text(self) -> bool:
        """Whether the model was built with a text prompt (``config.text_dim`` set)."""
        return self.config.text_dim is not None

    def require_text_support(self) -> None:
        """Raise the standard ValueError when the model has no text-prompt support."""
        if not self.supports_text:
            source = getattr(self.model, "checkpoint_path", None) or self.config.name
            raise PromptError(
                f"this model has no text-prompt support ({source}: its config has "
                f"text_dim=None); use points or a box, or a checkpoint trained with text prompts"
            )

    def get_text_encoder(self) -> TextEncoder:
        """The encoder for string prompts: the given one, else the checkpoint's (loaded once).

        Raises:
            ValueError: no text support, no encoder recorded, or an encoder of the wrong width.
            ImportError: the encoder's package is not installed (with the install hint).
        """
        self.require_text_support()
        if self.text_encoder is None:
            meta = getattr(self.model, "checkpoint_metadata", None) or {}
            encoder = text_encoder_from_metadata(meta)
            if encoder is None:
                raise PromptError(
                    f"this model takes {self.config.text_dim}-d text embeddings but its "
                    f"checkpoint metadata names no 'text_encoder'; pass "
                    f"SamPredictor(model, text_encoder=load_text_encoder(...)) or an embedding"
                )
            self.text_encoder = encoder
        if self.text_encoder.dim != self.config.text_dim:
            raise PromptError(
                f"text encoder {self.text_encoder.name!r} gives {self.text_encoder.dim}-d "
                f"embeddings but the model expects text_dim={self.config.text_dim}"
            )
        return self.text_encoder

    def encode_text(self, text: str | torch.Tensor | np.ndarray) -> torch.Tensor:
        """A text prompt as a ``(1, T)`` float32 embedding on the model's device.

        Args:
            text: a non-empty string, or a ``(T,)`` / ``(1, T)`` embedding (used as is).

        Raises:
            ValueError: no text support, empty string, wrong width, or NaN/Inf values.
        """
        self.require_text_support()
        if isinstance(text, str):
            if not text.strip():
                raise PromptError("empty text prompt: give a word or phrase, e.g. 'tumour'")
            emb = self.get_text_encoder().encode([text.strip()])
        else:
            emb = torch.as_tensor(np.asarray(text) if isinstance(text, np.ndarray) else text)
            emb = emb.detach().float().reshape(1, -1) if emb.ndim == 1 else emb.detach().float()
        t = self.config.text_dim
        if emb.shape != (1, t):
            raise PromptError(f"text embedding must be ({t},) or (1, {t}); got {tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise PromptError("text embedding contains NaN or Inf")
        return emb.to(self.device)

    def geometry_for(self, shape_hw: tuple[int, int]) -> ImageGeometry:
        """Geometry of an ``(H, W)`` image for this model (no embedding computed)."""
        return geometry_for(shape_hw, self.config)


def _finite_array(value, name: str) -> np.ndarray:
    """``value`` as a float32 array; :class:`PromptError` naming ``name`` if it is not numeric
    (ragged lists, strings, objects) or holds NaN/Inf."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PromptError(
            f"{name} must be numbers, shape as documented; got {_short(value)} ({exc})"
        ) from None
    if not np.isfinite(arr).all():
        raise PromptError(f"{name} contains NaN or Inf: {_short(value)}")
    return arr


def _points_and_labels(point_coords, point_labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(N, 2)`` float32 points and ``(N,)`` int64 labels in {0, 1}."""
    pts = _finite_array(point_coords, "point_coords")
    if pts.size == 0:
        pts = np.zeros((0, 2), np.float32)
    elif pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(
            f"point_coords must have shape (N, 2) as (x, y) pixels; got shape {pts.shape}: "
            f"{_short(point_coords)}"
        )
    labels = _finite_array(point_labels, "point_labels")
    if labels.ndim > 1 or (labels.ndim == 0 and len(pts) != 1):
        raise PromptError(f"point_labels must have shape (N,); got shape {labels.shape}")
    labels = labels.reshape(-1)
    if labels.shape[0] != pts.shape[0]:
        raise PromptError(
            f"point_labels has {labels.shape[0]} entries for {pts.shape[0]} points "
            f"(point_coords shape {pts.shape}); expected one label per point"
        )
    if not np.isin(labels, (0, 1)).all():
        raise PromptError(
            f"point_labels must be 0 (background) or 1 (foreground); got "
            f"{sorted(set(labels.tolist()))[:10]}"
        )
    return pts, labels.astype(np.int64)


def _short(value, limit: int = 120) -> str:
    """``repr`` of a user value, cut to ``limit`` characters."""
    try:
        text = repr(np.asarray(value).tolist()) if not isinstance(value, str) else repr(value)
    except Exception:  # noqa: BLE001 - only for the message
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_inside(xy: np.ndarray, w: int, h: int, what: str) -> None:
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        raise PromptError(
            f"{what} {xy[bad][0].tolist()} (x, y) lies outside the image of width {w} and "
            f"height {h}; coordinates are (x, y) pixels of the original image"
        )
