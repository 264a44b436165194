"""The eval-only fast path of :mod:`~napari_sam_med.modeling.tiny_vit` (its plain
:class:`~napari_sam_med.modeling.tiny_vit.TinyViT` is the reference; the equivalence tests sit
beside this module's name: ``tests/test_fused_tiny_vit.py``, real weights and random ones, with
and without oneDNN, under autocast).

Built by ``TinyViT.fuse_for_inference()`` from the live modules; it holds folded copies of the
weights (computed in float64, stored in the parameters' dtype) and never changes the module.

What makes it fast on a CPU (``benchmarks/bench_encoder.py`` prints measured figures):

* BatchNorm folded into every conv; LayerNorm affines folded into the next linear layer; the
  attention scale folded into the q rows; attention bias tables gathered once.
* One layout from the first layer to the neck: channels-last tokens ``HxWxC``. 1x1
  convolutions are matrix products on them and the 3x3 depthwise convolutions run on
  channels-last views, so no layout change is made between layers.
* Bias, GELU and residual adds run inside the GEMM / convolution epilogues (oneDNN fused ops,
  ``_cpu_kernels.py``; plain aten ops where they are unavailable).
* Window attention is ``scaled_dot_product_attention`` with the bias table as additive mask
  (no ``N x N`` score tensor in memory, no copies of q, k, v).
* The full-resolution stages (MBConv and patch merging) run in row strips with a one-row
  halo, so the 4x expanded hidden activations never exist in full (64 MB per block); the
  MLPs run in chunks of rows for the same reason.
* Optionally (``int8=True``, ``precision="int8"``) the transformer blocks' linear layers run
  as dynamic int8 products (``_int8_linear.py``); the default is exact float32.

Images of a batch are encoded one after the other (the work per image is large).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from ._cpu_kernels import conv2d, linear, linear_add
from ._int8_linear import Int8Weight
from .window_attention import window_partition, window_reverse

if TYPE_CHECKING:
    from .common import LayerNorm2d
    from .tiny_vit import ConvBN, MBConv, PatchMerging, Stage, TinyViT, TinyViTBlock

# Elements (floats) per row strip or MLP chunk of hidden activations (16 MB). Every chunk adds
# parallel regions, and on a loaded machine each thread barrier can stall for a scheduler time
# slice, so chunks stay coarse; 16 MB strips of fused ops measured faster than 4 MB ones.
_STRIP_ELEMS = 1 << 20
_MLP_ELEMS = 1 << 21
_CL = torch.channels_last


def _fold_conv(m: ConvBN, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded conv weight (1x1 kernels flattened to ``Cout x Cin``; others channels-last)."""
    bn, conv = m.bn, m.c
    mean, var = m.running_stats()
    scale = bn.weight.double() / torch.sqrt(var.double() + bn.eps)
    w = conv.weight.double() * scale[:, None, None, None]
    b = bn.bias.double() - mean.double() * scale
    if conv.kernel_size == (1, 1):
        return w.flatten(1).to(dtype).contiguous(), b.to(dtype)
    return w.to(dtype).contiguous(memory_format=_CL), b.to(dtype)


def _fold_ln_linear(
    norm: torch.nn.LayerNorm, lin: torch.nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``lin(norm(x))`` expressed on the affine-free normalised ``x``."""
    w = lin.weight.double()
    return w * norm.weight.double()[None, :], lin.bias.double() + w @ norm.bias.double()


def _as_map(t: torch.Tensor) -> torch.Tensor:
    """``HxWxC`` tokens as a ``1xCxHxW`` channels-last view (no copy)."""
    return t[None].permute(0, 3, 1, 2)


class _Strip:
    """1x1 conv + GELU, 3x3 depthwise conv (stride s) + GELU, 1x1 conv [+ residual + GELU].

    Tokens ``HxWxCin`` in, ``H'xW'xCout`` out (``H' = ceil(H / s)``). The hidden map is made in
    bands of output rows; each band holds the input rows its 3x3 windows need (a one-row halo,
    plus one more row for stride 2 so that band and image row parities agree) and the zero
    padding of the convolution supplies the image border.
    """

    def __init__(self, conv1: ConvBN, conv2: ConvBN, conv3: ConvBN, residual: bool) -> None:
        dtype = conv1.c.weight.dtype
        self.w1, self.b1 = _fold_conv(conv1, dtype)
        self.w2, self.b2 = _fold_conv(conv2, dtype)
        self.w3, self.b3 = _fold_conv(conv3, dtype)
        self.stride = conv2.c.stride[0]
        self.residual = residual

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``HxWxCin`` -> ``H'xW'xCout``."""
        h, w, cin = x.shape
        s, hidden, cout = self.stride, self.w1.shape[0], self.w3.shape[0]
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        out = x.new_empty((ho, wo, cout))
        rows = max(1, _STRIP_ELEMS // (w * hidden * s))
        for o0 in range(0, ho, rows):
            o1 = min(o0 + rows, ho)
            lo, hi = max(o0 * s - s, 0), min((o1 - 1) * s + 2, h)
            t = linear(x[lo:hi].reshape(-1, cin), self.w1, self.b1, gelu=True)
            t = _as_map(t.view(hi - lo, w, hidden))
            t = conv2d(t, self.w2, self.b2, (1, 1), s, hidden, gelu=True)[0]
            j0 = (o0 * s - lo) // s  # output rows of the band that belong to this strip
            t = t[:, j0 : j0 + o1 - o0].permute(1, 2, 0).reshape(-1, hidden)
            if self.residual:
                r = linear_add(t, self.w3, self.b3, x[o0:o1].reshape(-1, cin))
                out[o0:o1] = torch.ops.aten.gelu_(r).view(o1 - o0, wo, cout)
            else:
                out[o0:o1] = linear(t, self.w3, self.b3).view(o1 - o0, wo, cout)
        return out


def _int8(
    w: torch.Tensor | Int8Weight, b: torch.Tensor | None
) -> tuple[Int8Weight, torch.Tensor | None]:
    """``(w, b)`` as an int8 weight holding its bias (unchanged when already int8)."""
    return (w, b) if isinstance(w, Int8Weight) else (Int8Weight(w, b), None)


class _Block:
    """Folded :class:`TinyViTBlock` on one ``HxWxC`` token map."""

    qkv_w: torch.Tensor | Int8Weight
    proj_w: torch.Tensor | Int8Weight
    fc1_w: torch.Tensor | Int8Weight
    fc2_w: torch.Tensor | Int8Weight
    qkv_b: torch.Tensor | None
    proj_b: torch.Tensor | None
    fc1_b: torch.Tensor | None
    fc2_b: torch.Tensor | None

    def __init__(self, blk: TinyViTBlock) -> None:
        attn, mlp = blk.attn, blk.mlp
        dtype = attn.qkv.weight.dtype
        self.window, self.heads, self.eps = blk.window, attn.num_heads, attn.norm.eps
        self.mlp_eps = mlp.norm.eps
        w, b = _fold_ln_linear(attn.norm, attn.qkv)
        dim = w.shape[1]
        w, b = w.view(self.heads, 3, -1, dim).clone(), b.view(self.heads, 3, -1).clone()
        w[:, 0] *= attn.scale  # q rows
        b[:, 0] *= attn.scale
        self.qkv_w, self.qkv_b = w.view(-1, dim).to(dtype), b.flatten().to(dtype)
        self.bias = attn.bias_table().detach().to(dtype)[None].contiguous()
        self.proj_w, self.proj_b = attn.proj.weight.detach(), attn.proj.bias.detach()
        self.lc_w, self.lc_b = _fold_conv(blk.local_conv, dtype)
        self.lc_pad = cast("tuple[int, int]", blk.local_conv.c.padding)  # int padding: (p, p)
        w, b = _fold_ln_linear(mlp.norm, mlp.fc1)
        self.fc1_w, self.fc1_b = w.to(dtype), b.to(dtype)
        self.fc2_w, self.fc2_b = mlp.fc2.weight.detach(), mlp.fc2.bias.detach()

    def quantize_int8(self) -> None:
        """Run qkv, proj, fc1 and fc2 as dynamic int8 products (``precision="int8"``)."""
        self.qkv_w, self.qkv_b = _int8(self.qkv_w, self.qkv_b)
        self.proj_w, self.proj_b = _int8(self.proj_w, self.proj_b)
        self.fc1_w, self.fc1_b = _int8(self.fc1_w, self.fc1_b)
        self.fc2_w, self.fc2_b = _int8(self.fc2_w, self.fc2_b)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """``x + proj(window attention(x))`` on ``HxWxC`` tokens (zero-padded windows)."""
        h, w, c = x.shape
        xw = window_partition(x[None], self.window)
        n_win, n = xw.shape[:2]
        xw = F.layer_norm(xw.view(n_win * n, c), (c,), None, None, self.eps)
        qkv = linear(xw, self.qkv_w, self.qkv_b).view(n_win, n, self.heads, 3, -1)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.to(q.dtype), scale=1.0)
        out = window_reverse(out.transpose(1, 2).reshape(n_win, n, c), self.window, 1, h, w)
        return linear_add(out[0].reshape(h * w, c), self.proj_w, self.proj_b, x.reshape(h * w, c))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``HxWxC`` -> ``HxWxC``."""
        h, w, c = x.shape
        x = self.attention(x).view(h, w, c)
        x = conv2d(_as_map(x), self.lc_w, self.lc_b, self.lc_pad, 1, c)[0].permute(1, 2, 0)
        flat = x.reshape(h * w, c)
        res = torch.empty_like(flat)
        step = max(1, _MLP_ELEMS // self.fc1_w.shape[0])  # (Int8Weight has .shape too)
        for i in range(0, h * w, step):
            t = F.layer_norm(flat[i : i + step], (c,), None, None, self.mlp_eps)
            t = linear(t, self.fc1_w, self.fc1_b, gelu=True)
            res[i : i + step] = linear_add(t, self.fc2_w, self.fc2_b, flat[i : i + step])
        return res.view(h, w, c)


class FusedTinyViT:
    """Callable eval-only twin of a :class:`TinyViT` (see the module docstring)."""

    def __init__(self, model: TinyViT, int8: bool = False) -> None:
        """Fold ``model``'s weights; ``int8``: the blocks' linear layers in dynamic int8."""
        with torch.no_grad():
            seq = model.patch_embed.seq  # ConvBN, GELU, ConvBN
            pe0, pe2 = cast("ConvBN", seq[0]), cast("ConvBN", seq[2])
            dtype = pe0.c.weight.dtype
            self.pe = (_fold_conv(pe0, dtype), _fold_conv(pe2, dtype))
            self.ops: list[_Strip | _Block] = []
            for i, stage in enumerate(cast("Iterable[Stage]", model.layers)):
                if i == 0:
                    mbconvs = cast("Iterable[MBConv]", stage.blocks)
                    self.ops += [_Strip(b.conv1, b.conv2, b.conv3, True) for b in mbconvs]
                else:
                    self.ops += [_Block(b) for b in cast("Iterable[TinyViTBlock]", stage.blocks)]
                if stage.downsample is not None:
                    d = cast("PatchMerging", stage.downsample)
                    self.ops.append(_Strip(d.conv1, d.conv2, d.conv3, False))
            neck = model.neck  # Conv2d, LayerNorm2d, Conv2d, LayerNorm2d
            conv0, conv2 = cast(nn.Conv2d, neck[0]), cast(nn.Conv2d, neck[2])
            ln1, ln2 = cast("LayerNorm2d", neck[1]), cast("LayerNorm2d", neck[3])
            self.neck_w0 = conv0.weight.detach().flatten(1)
            self.neck_w2 = conv2.weight.detach().contiguous(memory_format=_CL)
            self.ln = [(m.weight.detach(), m.bias.detach(), m.eps) for m in (ln1, ln2)]
            if int8:
                for op in self.ops:
                    if isinstance(op, _Block):
                        op.quantize_int8()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``Bx3xHxW`` -> ``BxCoutxH/4xW/4``."""
        return torch.stack([self._one(img) for img in x])

    def _one(self, img: torch.Tensor) -> torch.Tensor:
        (w1, b1), (w2, b2) = self.pe
        c, h, w = img.shape
        x = linear(img.permute(1, 2, 0).reshape(h * w, c), w1, b1, gelu=True)
        x = linear(x, w2, b2).view(h, w, -1)
        for op in self.ops:
            x = op(x)
        (g1, be1, eps1), (g2, be2, eps2) = self.ln
        c = self.neck_w0.shape[0]
        x = F.layer_norm(linear(x, self.neck_w0, None), (c,), g1, be1, eps1)
        x = conv2d(_as_map(x), self.neck_w2, None, (1, 1))[0].permute(1, 2, 0)
        return F.layer_norm(x, (c,), g2, be2, eps2).permute(2, 0, 1)
