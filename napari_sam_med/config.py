"""Model configurations: every dimension of a SAM-family model in one frozen object.

Nothing is hard-coded in the builders: the image size, the normalisation, the
embedding size and the number of multimask outputs all come from here, and a
configuration round-trips through a plain dict (that is what our checkpoints store).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

NORMALIZATIONS = ("sam_mean_std", "minmax")


@dataclass(frozen=True)
class ViTConfig:
    """Plain ViT image encoder of SAM (windowed + global attention, relative positions)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class TinyViTConfig:
    """TinyViT image encoder of LiteMedSAM / MobileSAM."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to build a SAM-family model and to preprocess its input.

    Attributes:
        name: registry name (``vit_b``, ``lite_medsam``, ...).
        encoder: ``"vit"`` or ``"tiny_vit"``.
        vit / tiny_vit: the encoder's own settings (only the one named by ``encoder`` is used).
        img_size: square input side of the image encoder, in pixels.
        embed_dim: prompt/decoder embedding width (256 for every public model).
        image_embedding_size: side of the image embedding grid (64 for every public model).
        mask_in_chans: hidden channels of the dense mask-prompt downscaler.
        num_multimask_outputs: number of ambiguity-aware masks (3 in SAM).
        iou_head_depth / iou_head_hidden_dim: the IoU prediction MLP.
        decoder_depth / decoder_num_heads / decoder_mlp_dim: the two-way transformer.
        normalization: ``"sam_mean_std"`` (0-255 RGB, SAM's mean/std) or ``"minmax"``
            (per image to [0, 1], MedSAM and LiteMedSAM).
        pixel_mean / pixel_std: used with ``sam_mean_std``.
        text_dim: width of an optional text embedding prompt (None: no text parameters).
    """

    name: str
    encoder: str = "vit"
    vit: ViTConfig = field(default_factory=ViTConfig)
    tiny_vit: TinyViTConfig = field(default_factory=TinyViTConfig)
    img_size: int = 1024
    embed_dim: int = 256
    image_embedding_size: int = 64
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    normalization: str = "sam_mean_std"
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    text_dim: int | None = None

    def __post_init__(self) -> None:
        if self.encoder not in ("vit", "tiny_vit"):
            raise ValueError(f"SamConfig.encoder={self.encoder!r}; expected 'vit' or 'tiny_vit'")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"SamConfig.normalization={self.normalization!r}; expected one of {NORMALIZATIONS}"
            )
        if self.img_size <= 0 or self.image_embedding_size <= 0:
            raise ValueError(
                f"SamConfig sizes must be positive, got img_size={self.img_size}, "
                f"image_embedding_size={self.image_embedding_size}"
            )
        if self.text_dim is not None and self.text_dim <= 0:
            raise ValueError(f"SamConfig.text_dim={self.text_dim}; expected a positive int or None")

    @property
    def mask_input_size(self) -> int:
        """Side of the dense mask prompt (and of the low-res logits): 4x the embedding."""
        return 4 * self.image_embedding_size

    def with_preprocessing(self, normalization: str) -> SamConfig:
        """Return a copy with another input normalisation (e.g. MedSAM weights on vit_b)."""
        return replace(self, normalization=normalization)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict (tuples become lists) suitable for ``weights_only`` checkpoints."""
        return _lists(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown SamConfig fields {unknown}; expected a subset of {sorted(known)}"
            )
        kwargs = dict(data)
        if "vit" in kwargs:
            kwargs["vit"] = ViTConfig(**_tuples(kwargs["vit"]))
        if "tiny_vit" in kwargs:
            kwargs["tiny_vit"] = TinyViTConfig(**_tuples(kwargs["tiny_vit"]))
        for key in ("pixel_mean", "pixel_std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


_VIT_B = ViTConfig(768, 12, 12, (2, 5, 8, 11))
_VIT_L = ViTConfig(1024, 24, 16, (5, 11, 17, 23))
_VIT_H = ViTConfig(1280, 32, 16, (7, 15, 23, 31))

REGISTRY: dict[str, SamConfig] = {
    "vit_b": SamConfig(name="vit_b", encoder="vit", vit=_VIT_B),
    "vit_l": SamConfig(name="vit_l", encoder="vit", vit=_VIT_L),
    "vit_h": SamConfig(name="vit_h", encoder="vit", vit=_VIT_H),
    # MedSAM: vit_b weights and keys, min-max normalised input.
    "medsam_vit_b": SamConfig(
        name="medsam_vit_b", encoder="vit", vit=_VIT_B, normalization="minmax"
    ),
    "lite_medsam": SamConfig(
        name="lite_medsam", encoder="tiny_vit", img_size=256, normalization="minmax"
    ),
    # Our own interactive model: LiteMedSAM's encoder, a prompt encoder and mask decoder
    # fine-tuned by training/ for clicks and 3D propagation (docs/model_card_sam_med_lite.md).
    "sam_med_lite": SamConfig(
        name="sam_med_lite", encoder="tiny_vit", img_size=256, normalization="minmax"
    ),
    # A small random model for tests: 128 px input, 8x8 embedding, narrow everything.
    "tiny": SamConfig(
        name="tiny",
        encoder="vit",
        vit=ViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4),
        img_size=128,
        embed_dim=32,
        image_embedding_size=8,
        mask_in_chans=4,
        iou_head_hidden_dim=32,
        decoder_depth=2,
        decoder_num_heads=2,
        decoder_mlp_dim=64,
        normalization="minmax",
    ),
}


# The model that build_sam, the sam-med CLI and the plugin use when none is named: our own
# sam_med_lite (v2): on the validation patients above LiteMedSAM from a 3D box and from one
# click, and after every corrective click from any start (a 2D box alone starts 0.016 below;
# docs/model_card_sam_med_lite.md). "lite_medsam" stays selectable by name.
DEFAULT_MODEL = "sam_med_lite"


def get_config(name: str) -> SamConfig:
    """Look up a registry configuration by name, with a helpful error."""
    key = name.strip().lower()
    if key not in REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; expected one of {sorted(REGISTRY)} or a checkpoint file"
        )
    return REGISTRY[key]
