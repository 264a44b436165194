"""SAM's prompt encoder: points and boxes to sparse tokens, mask logits to a dense embedding.

Coordinates are in pixels of the padded model input, ordered ``(x, y)`` (column, row).
Point labels: ``-1`` padding (not a point), ``0`` negative, ``1`` positive, ``2`` / ``3`` the
top-left / bottom-right box corner.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .common import LayerNorm2d

POINT_LABEL_PAD = -1
NUM_POINT_EMBEDDINGS = 4  # negative, positive, box top-left, box bottom-right


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding with a fixed Gaussian frequency matrix.

    Args:
        num_pos_feats: Number of frequencies ``F``; encodings have ``2F`` channels (sin, cos).
        scale: Standard deviation of the Gaussian frequencies (values <= 0 mean 1).
    """

    positional_encoding_gaussian_matrix: torch.Tensor  # ``2xF`` buffer, registered in __init__

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def encode_unit(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode ``...x2`` coordinates in ``[0, 1]`` ordered ``(x, y)``; returns ``...x2F``."""
        gaussian = self.positional_encoding_gaussian_matrix
        projected = (2 * coords.to(gaussian.dtype) - 1) @ gaussian
        projected = projected * (2 * math.pi)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encode the centres of an ``h x w`` grid; returns ``2F x h x w``."""
        h, w = size
        gaussian = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=gaussian.device, dtype=gaussian.dtype) + 0.5) / h
        xs = (torch.arange(w, device=gaussian.device, dtype=gaussian.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # h x w x (x, y)
        return self.encode_unit(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode pixel coordinates ``BxNx2`` ``(x, y)`` in an image of size ``(H, W)``."""
        h, w = image_size
        norm = torch.tensor([w, h], device=coords.device, dtype=torch.float32)
        return self.encode_unit(coords.float() / norm)


class PromptEncoder(nn.Module):
    """Encode point, box and mask prompts for the mask decoder.

    Args:
        embed_dim: Prompt embedding width ``C``.
        image_embedding_size: Image-embedding grid ``(h, w)``.
        input_image_size: Padded model input ``(H, W)`` in pixels.
        mask_in_chans: Hidden channels of the mask downscaling network.
        text_dim: Width of text-prompt embeddings. ``None`` (default) creates no extra
            parameters (the official state-dict keys); otherwise a learned projection
            ``text_proj`` (``text_dim -> embed_dim``) and a learned type embedding
            ``text_embed`` make each text embedding one more sparse token.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = (image_embedding_size[0], image_embedding_size[1])
        self.input_image_size = (input_image_size[0], input_image_size[1])
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_EMBEDDINGS)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_dim = text_dim
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None
        if text_dim is not None:
            self.text_proj = nn.Linear(text_dim, embed_dim)
            self.text_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, shape ``1xCxhxw``.

        It depends only on the (non-trainable) Gaussian frequency buffer, so it is computed
        once and cached until that buffer changes. The cached tensor is shared: do not modify
        it in place.
        """
        gaussian = self.pe_layer.positional_encoding_gaussian_matrix
        version = -1 if gaussian.is_inference() else gaussian._version
        key = (gaussian.data_ptr(), version, gaussian.dtype, gaussian.device)
        if self._dense_pe is None or self._dense_pe[0] != key:
            # a normal tensor even when first asked for under inference_mode, so that the same
            # cached value can later enter autograd graphs during training
            with torch.inference_mode(False):
                pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            self._dense_pe = (key, pe)
        return self._dense_pe[1]

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords, labels)``: coords ``BxNx2`` ``(x, y)`` in input-image pixels,
                labels ``BxN`` (-1 pad, 0 negative, 1 positive, 2/3 box corners).
            boxes: ``Bx4`` (or ``Bx1x4``) boxes ``(x0, y0, x1, y1)`` in input-image pixels.
            masks: ``Bx1x(4h)x(4w)`` mask logits.
            text: ``BxT`` text embeddings (``T = text_dim``), from any sentence encoder.

        Returns:
            Sparse embeddings ``BxNxC`` (points, one padding token if there is no box, then two
            box corners, then the text token) and dense embeddings ``BxCxhxw``.

        Raises:
            ValueError: On malformed shapes, unknown labels or inconsistent batch sizes, or a
                text prompt for a model built without ``text_dim``.
        """
        if text is not None:
            text = self._check_text(text)
        only_text = text is not None and points is None and boxes is None
        bs = _batch_size(points, text if only_text else boxes, masks)
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty((bs, 0, self.embed_dim))]
        if points is not None:
            sparse.append(self._embed_points(*points, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if text is not None:
            if text.shape[0] != bs:
                raise ValueError(f"text batch {text.shape[0]} does not match the prompts' {bs}")
            sparse.append((self.text_proj(text.to(weight.dtype)) + self.text_embed.weight)[:, None])
        sparse_embeddings = torch.cat(sparse, dim=1)
        if masks is not None:
            dense_embeddings = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense_embeddings = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse_embeddings, dense_embeddings

    def _check_text(self, text: torch.Tensor) -> torch.Tensor:
        """Validate ``BxT`` (or ``T``) text embeddings for this encoder."""
        if self.text_dim is None:
            raise ValueError(
                "this model has no text-prompt support (its config has text_dim=None); use "
                "points or a box, or a checkpoint trained with text prompts"
            )
        text = text[None] if text.ndim == 1 else text
        if text.ndim != 2 or text.shape[1] != self.text_dim:
            raise ValueError(f"expected text embeddings Bx{self.text_dim}, got {tuple(text.shape)}")
        return text

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Embed ``BxNx2`` points with ``BxN`` labels; append one padding point if ``pad``."""
        if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise ValueError(
                "expected point coords BxNx2 and labels BxN, got "
                f"{tuple(coords.shape)} and {tuple(labels.shape)}"
            )
        valid = (labels >= POINT_LABEL_PAD) & (labels < NUM_POINT_EMBEDDINGS)
        if not bool(valid.all()):
            raise ValueError(f"point labels must be in [-1, 3], got {labels.unique().tolist()}")
        coords = coords + 0.5  # pixel centre
        labels = labels.long()
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        return self.embed_point_tokens(coords, labels)

    def embed_point_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Embed checked point tokens: ``BxNx2`` pixel-centre coordinates (pixel + 0.5) with
        ``BxN`` long labels in ``[-1, 3]`` (-1 padding, 0/1 points, 2/3 box corners); ``BxNxC``.

        The traced ONNX decoder (:mod:`napari_sam_med.onnx_export`) embeds its point inputs here.
        """
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        is_pad = (labels == POINT_LABEL_PAD).unsqueeze(-1)
        table = torch.cat(
            [self.not_a_point_embed.weight]
            + [cast(nn.Embedding, e).weight for e in self.point_embeddings],
            dim=0,
        )  # row 0: padding, rows 1..4: labels 0..3
        return torch.where(is_pad, torch.zeros_like(pe), pe) + table[labels + 1]

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Embed ``Bx4`` boxes ``(x0, y0, x1, y1)`` as two corner tokens, ``Bx2xC``."""
        if boxes.ndim == 0 or boxes.numel() != boxes.shape[0] * 4:
            raise ValueError(f"expected boxes of shape Bx4 or Bx1x4, got {tuple(boxes.shape)}")
        corners = boxes.reshape(-1, 2, 2) + 0.5  # pixel centre
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        top_left = cast(nn.Embedding, self.point_embeddings[2])
        bottom_right = cast(nn.Embedding, self.point_embeddings[3])
        corner_embed = torch.cat([top_left.weight, bottom_right.weight])
        return pe + corner_embed

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Downscale ``Bx1x(4h)x(4w)`` mask logits to ``BxCxhxw``."""
        expected = (1, *self.mask_input_size)
        if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
            raise ValueError(
                f"expected masks of shape Bx1x{self.mask_input_size[0]}x{self.mask_input_size[1]}"
                f", got {tuple(masks.shape)}"
            )
        return self.mask_downscaling(masks)


def _batch_size(
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    masks: torch.Tensor | None,
) -> int:
    """Batch size of the prompts: points and boxes must agree; masks may have batch 1."""
    sparse_sizes = {}
    if points is not None:
        sparse_sizes["points"] = points[0].shape[0]
    if boxes is not None:
        sparse_sizes["boxes"] = boxes.shape[0]
    if len(set(sparse_sizes.values())) > 1:
        raise ValueError(f"prompt batch sizes differ: {sparse_sizes}")
    if masks is None:
        return next(iter(sparse_sizes.values()), 1)
    bs = next(iter(sparse_sizes.values()), masks.shape[0])
    if masks.shape[0] not in (1, bs):
        raise ValueError(f"mask batch {masks.shape[0]} must be 1 or match the prompts' {bs}")
    return bs
