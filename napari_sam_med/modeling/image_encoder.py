"""SAM's ViT image encoder: windowed + global attention with decomposed relative positions.

The layout of parameters (names and shapes) follows the public SAM checkpoints, so that
``sam_vit_{b,l,h}`` and MedSAM weights load with strict key checking. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``; the decomposed relative-position term is
passed to it as an additive float mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock

_LN_EPS = 1e-6


class ImageEncoderViT(nn.Module):
    """ViT backbone (ViTDet style) with a convolutional neck.

    Args:
        img_size: Side of the square input image ``S`` in pixels.
        patch_size: Side of a patch; the embedding grid is ``S // patch_size`` square.
        in_chans: Input channels.
        embed_dim: Token width.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        out_chans: Channels of the output embedding.
        qkv_bias: Learn a bias for the q, k, v projections.
        use_abs_pos: Learn an absolute positional embedding ``1 x g x g x embed_dim``.
        use_rel_pos: Add decomposed relative positional embeddings to attention logits.
        window_size: Side of attention windows in tokens (0 = global attention everywhere).
        global_attn_indexes: Indexes of blocks that use global instead of windowed attention.

    Raises:
        ValueError: If ``img_size`` is not a multiple of ``patch_size`` or a global attention
            index is outside ``[0, depth)``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} outside [0, {depth}) for depth {depth}")
        self.img_size = img_size
        self.in_chans = in_chans
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            x: ``Bx{in_chans}xSxS`` float images, already normalised and padded.

        Returns:
            ``Bx{out_chans}x(S/patch)x(S/patch)`` image embeddings.

        Raises:
            ValueError: If ``x`` is not 4-D with ``in_chans`` channels.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape Bx{self.in_chans}xHxW, got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + _resize_pos_embed(self.pos_embed, x.shape[1:3])
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``BxCxHxW`` -> ``Bx(H/p)x(W/p)xD`` (channels last)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project patches of ``x`` (``BxCxHxW``) to tokens on a ``BxhxwxD`` grid."""
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block with optional windowed attention.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width relative to ``dim``.
        qkv_bias: Learn a bias for q, k, v.
        use_rel_pos: Use decomposed relative positional embeddings.
        window_size: Window side in tokens; 0 means global attention.
        input_size: Token grid ``(h, w)`` of the whole image (used for global attention).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to tokens ``x`` of shape ``BxhxwxD``; returns the same shape."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            windows, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention over a 2-D token grid with decomposed relative positions.

    Args:
        dim: Token width.
        num_heads: Attention heads; must divide ``dim``.
        qkv_bias: Learn a bias for q, k, v.
        use_rel_pos: Add decomposed relative positional embeddings.
        input_size: Grid ``(h, w)`` the relative-position tables are sized for
            (``2h - 1`` and ``2w - 1`` rows).

    Raises:
        ValueError: If ``num_heads`` does not divide ``dim``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within each item of ``x`` (``Bxhxwxdim``); returns ``Bxhxwxdim``."""
        b, h, w, dim = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x hw x head_dim
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, dim))


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into square windows, zero-padding bottom/right when needed.

    Args:
        x: Tokens ``BxHxWxC``.
        window_size: Window side ``ws``.

    Returns:
        Windows ``(B*nWin)xwsxwsxC`` (row-major window order) and the padded size ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h = -h % window_size
    pad_w = -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding.

    Args:
        windows: ``(B*nWin)xwsxwsxC``.
        window_size: Window side ``ws``.
        padded_hw: Padded grid ``(Hp, Wp)``.
        hw: Original grid ``(H, W)``.

    Returns:
        Tokens ``BxHxWxC``.
    """
    hp, wp = padded_hw
    h, w = hw
    n_h, n_w = hp // window_size, wp // window_size
    b = windows.shape[0] // (n_h * n_w)
    x = windows.view(b, n_h, n_w, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp != h or wp != w:
        x = x[:, :h, :w, :].contiguous()
    return x


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Look up relative-position embeddings for every (query, key) pair along one axis.

    The table is linearly resampled when its length differs from ``2 * max(q, k) - 1``.

    Args:
        q_size: Number of query positions along the axis.
        k_size: Number of key positions along the axis.
        rel_pos: Table ``LxC``.

    Returns:
        ``q_size x k_size x C`` embeddings.
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.T.unsqueeze(0), size=length, mode="linear")
        rel_pos = resized.squeeze(0).T
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    index = (q_coords - k_coords + (k_size - 1) * k_scale).long()
    return rel_pos[index]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_hw: tuple[int, int],
    k_hw: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias from decomposed relative positions (MViTv2).

    ``bias[i, j] = q_i . Rh[row(i), row(j)] + q_i . Rw[col(i), col(j)]`` with unscaled ``q``.

    Args:
        q: Queries ``B x heads x (qh*qw) x C``.
        rel_pos_h: Height table ``Lh x C``.
        rel_pos_w: Width table ``Lw x C``.
        q_hw: Query grid ``(qh, qw)``.
        k_hw: Key grid ``(kh, kw)``.

    Returns:
        Bias ``B x heads x (qh*qw) x (kh*kw)`` in the dtype of ``q``.
    """
    (qh, qw), (kh, kw) = q_hw, k_hw
    r_h = relative_position_table(qh, kh, rel_pos_h).to(q.dtype)
    r_w = relative_position_table(qw, kw, rel_pos_w).to(q.dtype)
    b, heads, _, c = q.shape
    grid_q = q.reshape(b, heads, qh, qw, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, r_w)
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    return bias.reshape(b, heads, qh * qw, kh * kw)


def _resize_pos_embed(pos_embed: torch.Tensor, grid_hw: torch.Size) -> torch.Tensor:
    """Bicubically resample ``1xhxwxD`` ``pos_embed`` to ``grid_hw`` if the grid differs."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid_hw):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2), size=tuple(grid_hw), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)
