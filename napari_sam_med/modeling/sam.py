"""Composition root: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

if TYPE_CHECKING:
    from ..config import SamConfig


class Sam(nn.Module):
    """Segment Anything model assembled from injected sub-modules.

    Input normalisation (pixel mean/std or min-max) and resizing live in the preprocessing
    layer, not here; :meth:`encode_image` expects an already normalised, padded image.

    Args:
        image_encoder: Maps ``Bx3xSxS`` images to ``BxCxhxw`` embeddings (ViT or TinyViT).
        prompt_encoder: :class:`PromptEncoder` for points, boxes and masks.
        mask_decoder: :class:`MaskDecoder`.
    """

    mask_threshold: float = 0.0
    #: autocast dtype of :meth:`encode_image` (``None``: float32); set by ``build_sam``
    encoder_autocast: torch.dtype | None = None
    #: the TinyViT encoder's fused path runs its transformer linears in dynamic int8
    #: (``precision="int8"``); set by ``build_sam``
    encoder_int8: bool = False
    #: what ``build_model`` / ``build_sam`` record on the model (declared for the type checker)
    config: SamConfig
    checkpoint_path: str | None
    checkpoint_metadata: dict[str, Any]

    def __init__(
        self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Embed normalised images ``Bx3xSxS`` (float); returns ``BxCxhxw`` float32.

        Runs under autocast when :attr:`encoder_autocast` is set (the fast mode).
        """
        if self.encoder_autocast is None:
            return self.image_encoder(x)
        with torch.autocast(device_type=x.device.type, dtype=self.encoder_autocast):
            return self.image_encoder(x).float()

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks for a batch of prompts.

        Args:
            image_embeddings: ``B_img x C x h x w`` with ``B_img`` 1 (shared) or ``B``.
            points: ``(coords BxNx2 (x, y) in input-image pixels, labels BxN)``.
            boxes: ``Bx4`` boxes ``(x0, y0, x1, y1)`` in input-image pixels.
            masks: ``Bx1x4hx4w`` mask logits from a previous prediction.
            multimask_output: Return 3 ambiguity masks instead of 1.

        Returns:
            Low-resolution mask logits ``Bx{3|1}x4hx4w`` and IoU predictions ``Bx{3|1}``.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(
        self,
        images: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``images`` (``B_img x3xSxS``, normalised) and decode the prompts against them.

        See :meth:`decode` for the prompt arguments and the return value.
        """
        return self.decode(self.encode_image(images), points, boxes, masks, multimask_output)
