"""Windowed self-attention of the TinyViT blocks (:mod:`.tiny_vit`): cutting tokens into
windows and back, multi-head attention with a learnt bias per relative offset inside a
window. The functions are shared with the fused fast path (:mod:`._fused_tiny_vit`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad ``BxHxWxC`` tokens to whole windows and cut them out.

    Returns:
        ``(B * nH * nW) x (window * window) x C``, windows in row-major order.
    """
    b, h, w, c = x.shape
    # non-negative integer arithmetic only: ONNX's integer Div truncates towards zero
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // window, (w + pad_w) // window
    x = x.view(b, nh, window, nw, window, c).transpose(2, 3)
    return x.reshape(b * nh * nw, window * window, c)


def window_reverse(xw: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B*nH*nW)xNxC`` -> ``BxHxWxC`` (padding cropped)."""
    nh, nw = (h + window - 1) // window, (w + window - 1) // window
    x = xw.view(b, nh, nw, window, window, -1).transpose(2, 3)
    x = x.reshape(b, nh * window, nw * window, -1)
    return x[:, :h, :w] if (nh * window, nw * window) != (h, w) else x


def window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """Multi-head attention inside windows with an additive per-head bias.

    Args:
        qkv: ``nWin x N x 3C``, laid out per head as ``[q, k, v]`` (checkpoint layout).
        bias: ``num_heads x N x N`` additive attention bias.
        num_heads: Number of heads.
        scale: Factor applied to ``q @ k^T`` (1.0 when folded into the q weights).

    Returns:
        ``nWin x N x C`` attention output, heads concatenated.
    """
    n_win, n, three_c = qkv.shape
    q, k, v = qkv.view(n_win, n, num_heads, 3, -1).permute(3, 0, 2, 1, 4).unbind(0)
    attn = torch.matmul(q, k.transpose(-2, -1))
    if scale != 1.0:
        attn = attn * scale
    attn = torch.softmax(attn + bias, dim=-1)
    return torch.matmul(attn, v).transpose(1, 2).reshape(n_win, n, three_c // 3)


class Attention(nn.Module):
    """Window self-attention with LayerNorm in front and a learnt bias per relative offset.

    Args:
        dim: Token width ``C``.
        num_heads: Heads; ``C`` must divide evenly.
        window: Window side; the bias table covers all ``|dy|, |dx|`` offsets inside it.
    """

    attention_bias_idxs: torch.Tensor  # ``N x N`` long buffer, registered in __init__

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = [
            offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets))
            for p in points
            for q in points
        ]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "attention_bias_idxs",
            torch.tensor(idxs).view(len(points), len(points)),
            persistent=False,
        )

    def bias_table(self) -> torch.Tensor:
        """Per-head bias gathered to ``num_heads x N x N`` (``N = window**2``)."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, xw: torch.Tensor) -> torch.Tensor:
        """``nWin x N x C`` windows (padding tokens included) -> ``nWin x N x C``."""
        qkv = self.qkv(self.norm(xw))
        return self.proj(window_attention(qkv, self.bias_table(), self.num_heads, self.scale))
