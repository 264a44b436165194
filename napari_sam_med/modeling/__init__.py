"""Pure-torch SAM modules (no I/O, no preprocessing, no GUI)."""

from .common import MLP, LayerNorm2d, MLPBlock
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .protocol import PromptModel
from .sam import Sam
from .transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "MLP",
    "Attention",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "PromptModel",
    "Sam",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
]
