"""TinyViT image encoder of LiteMedSAM (MobileSAM's variant at 256 px input).

Parameter names and shapes follow the public ``lite_medsam.pth`` checkpoint (``image_encoder.*``
rows of ``state_dict_lite_medsam.tsv``), so it loads with strict key checking. Layout:

* ``patch_embed``: two 1x1 conv+BatchNorm layers (no downsampling; 256 px stay 256 px).
* ``layers[0]``: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project, residual).
* ``layers[1:]``: TinyViT blocks (windowed attention with a learnt per-offset bias, 3x3
  depthwise "local" conv, MLP), each stage but the last ending in a patch-merging conv block.
  The patch merging into the last stage keeps the resolution, so the output grid is ``S / 4``.
* ``neck``: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d to ``out_chans`` channels.

The modules here are trainable (BatchNorm in train mode updates its statistics). For inference,
``TinyViT.fuse_for_inference()`` precomputes a fast eval-only path (``_fused_tiny_vit.py``):
BatchNorm folded into the convolutions, LayerNorm affines folded into the following linear
layers, attention bias tables gathered once, 1x1 convolutions run as matrix products on
channels-last tensors, and the full-resolution stages processed in row strips that stay in cache.
The state dict is left untouched. This module stays the reference; equivalence tests:
``tests/test_fused_tiny_vit.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, weights_signature
from .window_attention import Attention, window_partition, window_reverse

if TYPE_CHECKING:
    from ._fused_tiny_vit import FusedTinyViT


class ConvBN(nn.Module):
    """Bias-free convolution followed by BatchNorm (checkpoint keys ``c.*`` and ``bn.*``).

    Args:
        in_chans: Input channels.
        out_chans: Output channels.
        kernel_size: Square kernel size; padding is ``kernel_size // 2``.
        stride: Convolution stride.
        groups: Convolution groups (``in_chans`` for depthwise).
        bn_weight_init: Initial BatchNorm scale (0 makes a residual branch start as identity).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BxCinxHxW`` -> ``BxCoutxH'xW'``."""
        return self.bn(self.c(x))

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the BatchNorm running statistics folded in.

        Returns:
            ``(weight, bias)``: weight ``Cout x Cin/groups x k x k``, bias ``Cout``.
        """
        bn = self.bn
        mean, var = self.running_stats()
        scale = bn.weight / torch.sqrt(var + bn.eps)
        weight = self.c.weight * scale[:, None, None, None]
        return weight, bn.bias - mean * scale

    def running_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The BatchNorm's running ``(mean, var)``, ``Cout`` each: what folding needs."""
        mean, var = self.bn.running_mean, self.bn.running_var
        if mean is None or var is None:  # not with ConvBN's BatchNorm (it tracks them)
            raise ValueError("folding needs BatchNorm running statistics (track_running_stats)")
        return mean, var


class PatchEmbed(nn.Module):
    """Two 1x1 ConvBN layers with GELU between them (``seq.0`` and ``seq.2``)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2), nn.GELU(), ConvBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BxCinxHxW`` -> ``BxembedxHxW``."""
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, add, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BxCxHxW`` -> ``BxCxHxW``."""
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(h) + x)


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv with ``stride``, 1x1 conv (GELU after the first two)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BxCxHxW`` -> ``Bxout_dimxH'xW'`` with ``H' = ceil(H / stride)``."""
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class Mlp(nn.Module):
    """LayerNorm, linear, GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``...xC`` -> ``...xC``."""
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention + residual, depthwise local conv, MLP + residual.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        window: Attention window side (tokens are zero-padded to whole windows).
        mlp_ratio: MLP hidden width relative to ``dim``.
        local_conv_size: Kernel of the depthwise conv between attention and MLP.
    """

    def __init__(
        self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BxHxWxC`` tokens -> ``BxHxWxC``."""
        b, h, w, _ = x.shape
        x = x + window_reverse(self.attn(window_partition(x, self.window)), self.window, b, h, w)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class Stage(nn.Module):
    """Blocks of one resolution (``blocks``) and an optional patch merging (``downsample``)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class TinyViT(nn.Module):
    """TinyViT encoder: ``Bx3xSxS`` image in ``[0, 1]`` -> ``Bxout_chansx(S/4)x(S/4)``.

    Args:
        img_size: Nominal input side ``S`` (informational; any side divisible by 4 works).
        in_chans: Input channels.
        embed_dims: Width of each stage.
        depths: Blocks per stage (stage 0 is MBConv, the others TinyViT blocks).
        num_heads: Heads per stage (entry 0 unused).
        window_sizes: Attention window per stage (entry 0 unused).
        mlp_ratio: MLP hidden width relative to the stage width.
        mbconv_expand_ratio: Hidden width of the MBConv blocks relative to ``embed_dims[0]``.
        local_conv_size: Depthwise conv kernel inside TinyViT blocks.
        out_chans: Channels of the output embedding.

    Raises:
        ValueError: If the per-stage sequences differ in length or a width is not divisible by
            its number of heads.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        stages = len(embed_dims)
        if not stages >= 2 or {len(depths), len(num_heads), len(window_sizes)} != {stages}:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2): "
                f"got {embed_dims}, {depths}, {num_heads}, {window_sizes}"
            )
        self.img_size = img_size
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            if i == 0:
                blocks: list[nn.Module] = [
                    MBConv(dim, mbconv_expand_ratio) for _ in range(depths[i])
                ]
            else:
                blocks = [
                    TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                    for _ in range(depths[i])
                ]
            merge = None
            if i < stages - 1:  # the merge into the last stage keeps the resolution
                merge = PatchMerging(dim, embed_dims[i + 1], 1 if i == stages - 2 else 2)
            self.layers.append(Stage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)
        self._fast: FusedTinyViT | None = None  # set by fuse_for_inference()
        self._fast_requested = False
        self._fast_signature: tuple[tuple[int, int], ...] = ()
        self._fast_int8 = False  # the fused path's transformer linears in dynamic int8
        self.register_load_state_dict_post_hook(lambda module, _keys: module._drop_fast())

    @property
    def is_fused(self) -> bool:
        """Whether eval-mode forward passes use the fused inference path."""
        return self._fast_requested

    def fuse_for_inference(self, int8: bool | None = None) -> TinyViT:
        """Switch eval-mode forward passes to a fused, faster path; returns ``self``.

        Call it after loading weights. BatchNorm (running statistics) and LayerNorm affines are
        folded into copies of the weights; parameters and the state dict are unchanged, so the
        model can still be saved, reloaded or trained. The folded copies are rebuilt lazily
        whenever a parameter or buffer changes (``load_state_dict``, ``.to()``, optimiser
        steps) and after ``train()``. The fused path runs only in eval mode when no autograd
        graph is needed (gradients disabled, or neither the input nor any parameter requires
        grad); otherwise the plain, trainable modules run.

        ``int8=True`` makes the fused path run the transformer blocks' linear layers as
        dynamic int8 products (``precision="int8"``; ``False``: exact float32; ``None``: keep
        the previous choice). The plain modules are never quantised.
        """
        from ._fused_tiny_vit import FusedTinyViT

        if int8 is not None:
            self._fast_int8 = bool(int8)
        self._fast_requested = True
        self._fast = FusedTinyViT(self, int8=self._fast_int8)
        self._fast_signature = weights_signature(self)
        return self

    def _drop_fast(self) -> None:
        self._fast = None

    def _needs_graph(self, x: torch.Tensor) -> bool:
        """Whether this call must record an autograd graph (then the plain modules run)."""
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> TinyViT:
        """Set train/eval mode; leaving eval mode drops the folded inference weights."""
        if mode:
            self._drop_fast()
        return super().train(mode)

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any
    ) -> TinyViT:
        self._drop_fast()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            x: ``Bx in_chans x H x W`` float, min-max scaled to ``[0, 1]``; ``H, W`` divisible
                by 4 (256 for LiteMedSAM).

        Returns:
            ``B x out_chans x H/4 x W/4`` image embedding.

        Raises:
            ValueError: If ``x`` is not ``Bx in_chans xHxW`` with ``H`` and ``W`` divisible by 4.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(
                f"TinyViT expects B x {self.in_chans} x H x W with H, W divisible by 4; "
                f"got {tuple(x.shape)}"
            )
        if self._fast_requested and not self.training and not self._needs_graph(x):
            if self._fast is None or self._fast_signature != weights_signature(self):
                self.fuse_for_inference()
            return cast("FusedTinyViT", self._fast)(x)  # set by fuse_for_inference()
        x = self.patch_embed(x)
        for i, stage in enumerate(cast("Iterable[Stage]", self.layers)):
            if i == 1:
                x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC tokens for the attention stages
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:
                x = stage.downsample(x if i == 0 else x.permute(0, 3, 1, 2))
                if i > 0:
                    x = x.permute(0, 2, 3, 1)
        return self.neck(x.permute(0, 3, 1, 2))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
