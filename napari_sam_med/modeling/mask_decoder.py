"""SAM's mask decoder: prompt tokens + image embedding -> mask logits and IoU predictions.

Fast path: :mod:`._fused_decoder` computes the same function in a faster order (inference,
and a differentiable twin for training); this module stays the reference. Equivalence tests:
``tests/test_fused_decoder.py`` (outputs, weight updates, gradients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .common import MLP, LayerNorm2d, weights_signature

if TYPE_CHECKING:
    from ._fused_decoder import FusedMaskDecoder


class MaskDecoder(nn.Module):
    """Predict masks from an image embedding and prompt embeddings.

    Output token 0 predicts the single mask; tokens ``1..num_multimask_outputs`` predict the
    ambiguity-aware multimask outputs.

    Inference calls (eval mode with gradients disabled, e.g. under ``torch.inference_mode()``)
    use an equivalent, faster evaluation order (``_fused_decoder.py``) built from detached
    copies of the weights; it is rebuilt whenever a weight changes. Training, and any call with
    gradients enabled, runs the plain modules below.

    Args:
        transformer_dim: Channel width ``C`` of embeddings and tokens.
        transformer: Module mapping ``(image BxCxhxw, pe BxCxhxw, tokens BxNxC)`` to
            ``(tokens BxNxC, image tokens Bx(h*w)xC)``, e.g. :class:`TwoWayTransformer`.
        num_multimask_outputs: Number of masks returned when ``multimask_output`` is true.
        iou_head_depth: Layers of the IoU prediction MLP.
        iou_head_hidden_dim: Hidden width of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        self._fast: tuple[tuple[tuple[int, int], ...], FusedMaskDecoder] | None = None
        # training/grad calls use the differentiable fused twin (same function, faster)
        self.fused_training = True

    def _fast_path(self) -> FusedMaskDecoder | None:
        """The fused twin for this call, or ``None`` if it must use the plain modules.

        Inference (eval, no grad) reuses one cached twin with detached weights. Training (or any
        call with gradients) builds a differentiable twin on the current parameters when
        ``fused_training`` is on: the same function with cheaper products, forward and backward.
        """
        from .transformer import TwoWayTransformer

        if torch.compiler.is_compiling() or type(self.transformer) is not TwoWayTransformer:
            return None
        if self.training or torch.is_grad_enabled():
            if not self.fused_training:
                return None
            from ._fused_decoder import FusedMaskDecoder

            return FusedMaskDecoder(self, grad=True)
        signature = weights_signature(self)
        if self._fast is None or self._fast[0] != signature:
            from ._fused_decoder import FusedMaskDecoder

            self._fast = (signature, FusedMaskDecoder(self))
        return self._fast[1]

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: ``B_img x C x h x w``; ``B_img`` is 1 (shared by all prompts)
                or ``B``.
            image_pe: ``1 x C x h x w`` positional encoding of the embedding grid.
            sparse_prompt_embeddings: ``B x N x C`` point/box tokens.
            dense_prompt_embeddings: ``B x C x h x w`` (or ``1 x C x h x w``) mask embedding.
            multimask_output: Return the ``num_multimask_outputs`` ambiguity masks instead of
                the single mask.

        Returns:
            Mask logits ``B x M x 4h x 4w`` and IoU predictions ``B x M`` with
            ``M = num_multimask_outputs`` or 1.

        Raises:
            ValueError: If the batch sizes are incompatible.
        """
        selected = slice(1, None) if multimask_output else slice(0, 1)
        fast = self._fast_path()
        if fast is not None:
            b = sparse_prompt_embeddings.shape[0]
            _check_batch("image_embeddings", image_embeddings, b)
            _check_batch("dense_prompt_embeddings", dense_prompt_embeddings, b)
            _check_batch("image_pe", image_pe, b)
            return fast(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                selected,
            )  # fmt: skip
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``BxMx4hx4w`` and IoU predictions ``BxM``."""
        b = sparse_prompt_embeddings.shape[0]
        _check_batch("image_embeddings", image_embeddings, b)
        _check_batch("dense_prompt_embeddings", dense_prompt_embeddings, b)
        _check_batch("image_pe", image_pe, b)
        _, c, h, w = image_embeddings.shape

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1
        )
        src = (image_embeddings + dense_prompt_embeddings).expand(b, c, h, w)
        pos_src = image_pe.expand(b, c, h, w)

        hs, src_tokens = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]

        upscaled = self.output_upscaling(src_tokens.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # B x M x C/8
        _, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.flatten(2)).view(b, -1, h_up, w_up)
        return masks, self.iou_prediction_head(iou_token_out)


def _check_batch(name: str, tensor: torch.Tensor, batch: int) -> None:
    """Raise ``ValueError`` unless ``tensor`` is 4-D with batch 1 or ``batch``."""
    if tensor.ndim != 4 or tensor.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} must be 4-D with batch 1 or {batch} (the prompt batch), "
            f"got shape {tuple(tensor.shape)}"
        )
