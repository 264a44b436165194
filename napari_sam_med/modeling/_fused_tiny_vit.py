"""Eval-only fast path of :class:`~napari_sam_med.modeling.tiny_vit.TinyViT`.

Built by ``TinyViT.fuse_for_inference()`` from the live modules; it holds folded copies of the
weights (computed in float64, stored in the parameters' dtype) and never changes the module.

What makes it fast on a CPU (see ``benchmarks/bench_core.py`` for measured figures):

* BatchNorm folded into every conv; LayerNorm affines folded into the next linear layer; the
  attention scale folded into the q rows; attention bias tables gathered once.
* In the attention stages activations stay channels-last (``HxWxC``): 1x1 convolutions are
  plain matrix products and the local depthwise convolutions run on channels-last views.
* The full-resolution stages (MBConv and patch merging) run channel-first (the depthwise
  convolution is several times faster in that layout on CPUs) in row strips with a one-row
  halo, so the 4x expanded hidden activations never exist in full (64 MB per block);
  attention and MLPs run in chunks for the same reason.

Images of a batch are encoded one after the other (the work per image is large).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .tiny_vit import window_attention, window_partition, window_reverse

if TYPE_CHECKING:
    from .tiny_vit import ConvBN, TinyViT, TinyViTBlock

# Elements (floats) per band or chunk of intermediate activations (4 MB). Smaller chunks fit
# the caches better, but every chunk adds a few parallel regions, and on a heavily loaded
# machine each thread barrier can stall for a scheduler time slice. Measured on the idle 2-core
# box (2 threads, one 256x256 slice): 16 MB chunks 0.81 s, 4 MB 0.65 s, 1 MB 0.66 s; under a
# load of 10+ the 1 MB chunks made the encoder up to 10x slower than 16 MB ones. 4 MB keeps most
# of the idle-machine speed with a quarter of the 1 MB chunks' parallel calls.
_STRIP_ELEMS = 1 << 20
_ATTN_ELEMS = 1 << 20


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


def _fold_conv(m: ConvBN, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded conv weight (1x1 kernels flattened to ``Cout x Cin``) and bias."""
    bn, conv = m.bn, m.c
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * scale[:, None, None, None]
    b = bn.bias.double() - bn.running_mean.double() * scale
    if conv.kernel_size == (1, 1):
        w = w.flatten(1)
    return w.to(dtype).contiguous(), b.to(dtype)


def _fold_ln_linear(
    norm: torch.nn.LayerNorm, lin: torch.nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``lin(norm(x))`` expressed on the affine-free normalised ``x``."""
    w = lin.weight.double()
    return w * norm.weight.double()[None, :], lin.bias.double() + w @ norm.bias.double()


class _Strip:
    """1x1 conv + GELU, 3x3 depthwise conv (stride s) + GELU, 1x1 conv [+ residual + GELU].

    The hidden maps are channel-first (the depthwise convolution is much faster in that
    layout on CPUs) and made in bands of output rows with a one-row halo. Input and output are
    channel-first ``CxHxW`` maps, or channels-last ``HxWxC`` tokens with ``tokens_in`` /
    ``tokens_out`` (the attention stages' layout); the 1x1 convs absorb the transposition.
    """

    def __init__(
        self,
        conv1: ConvBN,
        conv2: ConvBN,
        conv3: ConvBN,
        residual: bool,
        tokens_in: bool = False,
        tokens_out: bool = False,
    ) -> None:
        dtype = conv1.c.weight.dtype
        self.w1, self.b1 = _fold_conv(conv1, dtype)
        self.w2, self.b2 = _fold_conv(conv2, dtype)
        self.w3, self.b3 = _fold_conv(conv3, dtype)
        self.b1c, self.b3c = self.b1[:, None], self.b3[:, None]
        self.stride = conv2.c.stride[0]
        self.residual = residual and not (tokens_in or tokens_out)
        self.tokens_in, self.tokens_out = tokens_in, tokens_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``CinxHxW`` (or ``HxWxCin``) -> ``CoutxH'xW'`` (or ``H'xW'xCout``).

        ``H' = ceil(H / stride)``, ``W' = ceil(W / stride)``.
        """
        h, w = x.shape[:2] if self.tokens_in else x.shape[1:]
        s, hidden, cout = self.stride, self.w1.shape[0], self.w3.shape[0]
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        out = x.new_empty((ho, wo, cout) if self.tokens_out else (cout, ho, wo))
        rows = max(1, _STRIP_ELEMS // (w * hidden * s))
        for o0 in range(0, ho, rows):
            o1 = min(o0 + rows, ho)
            a, b = o0 * s - 1, (o1 - 1) * s + 2  # input rows needed, halo included
            if self.tokens_in:
                band = x[max(a, 0) : min(b, h)].reshape(-1, x.shape[2]).t()
            else:
                band = x[:, max(a, 0) : min(b, h)].reshape(x.shape[0], -1)
            t = torch.addmm(self.b1c, self.w1, band)
            t = _gelu_(t).view(hidden, -1, w)
            if a < 0 or b > h:  # zero padding of the hidden map at the image border
                t = F.pad(t, (0, 0, int(a < 0), int(b > h)))
            t = _gelu_(F.conv2d(t[None], self.w2, self.b2, s, (0, 1), groups=hidden)[0])
            t = t.view(hidden, -1)
            if self.tokens_out:
                out[o0:o1] = F.linear(t.t(), self.w3, self.b3).view(o1 - o0, wo, cout)
            elif self.residual:
                r = torch.addmm(self.b3c, self.w3, t).view(cout, o1 - o0, wo)
                out[:, o0:o1] = _gelu_(r.add_(x[:, o0:o1]))
            else:
                out[:, o0:o1] = torch.addmm(self.b3c, self.w3, t).view(cout, o1 - o0, wo)
        return out


class _Block:
    """Folded :class:`TinyViTBlock` on one ``HxWxC`` token map."""

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
        self.bias = attn.bias_table().detach().to(dtype).contiguous()
        self.proj_w, self.proj_b = attn.proj.weight.detach(), attn.proj.bias.detach()
        self.lc_w, self.lc_b = _fold_conv(blk.local_conv, dtype)
        self.lc_pad = blk.local_conv.c.padding
        w, b = _fold_ln_linear(mlp.norm, mlp.fc1)
        self.fc1_w, self.fc1_b = w.to(dtype), b.to(dtype)
        self.fc2_w, self.fc2_b = mlp.fc2.weight.detach(), mlp.fc2.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``HxWxC`` -> ``HxWxC``."""
        h, w, c = x.shape
        xw = window_partition(x[None], self.window)
        n_win, n = xw.shape[:2]
        out = torch.empty_like(xw)
        step = max(1, _ATTN_ELEMS // (self.heads * n * n))
        for i in range(0, n_win, step):
            t = F.layer_norm(xw[i : i + step], (c,), None, None, self.eps)
            t = window_attention(F.linear(t, self.qkv_w, self.qkv_b), self.bias, self.heads, 1.0)
            out[i : i + step] = F.linear(t, self.proj_w, self.proj_b)
        x = x + window_reverse(out, self.window, 1, h, w)[0]
        x = F.conv2d(x.permute(2, 0, 1)[None], self.lc_w, self.lc_b, 1, self.lc_pad, groups=c)
        flat = x[0].permute(1, 2, 0).reshape(h * w, c)
        res = torch.empty_like(flat)
        step = max(1, _STRIP_ELEMS // self.fc1_w.shape[0])
        for i in range(0, h * w, step):
            t = F.layer_norm(flat[i : i + step], (c,), None, None, self.mlp_eps)
            t = _gelu_(F.linear(t, self.fc1_w, self.fc1_b))
            torch.add(
                flat[i : i + step], F.linear(t, self.fc2_w, self.fc2_b), out=res[i : i + step]
            )
        return res.view(h, w, c)


class FusedTinyViT:
    """Callable eval-only twin of a :class:`TinyViT` (see the module docstring)."""

    def __init__(self, model: TinyViT) -> None:
        with torch.no_grad():
            seq = model.patch_embed.seq
            dtype = seq[0].c.weight.dtype
            self.pe = (_fold_conv(seq[0], dtype), _fold_conv(seq[2], dtype))
            self.stages: list[list[_Strip | _Block]] = []
            for i, stage in enumerate(model.layers):
                if i == 0:
                    ops: list[_Strip | _Block] = [
                        _Strip(b.conv1, b.conv2, b.conv3, residual=True, tokens_out=False)
                        for b in stage.blocks
                    ]
                else:
                    ops = [_Block(b) for b in stage.blocks]
                if stage.downsample is not None:
                    d = stage.downsample
                    ops.append(
                        _Strip(d.conv1, d.conv2, d.conv3, False, tokens_in=i > 0, tokens_out=True)
                    )
                self.stages.append(ops)
            conv0, ln1, conv2, ln2 = model.neck
            self.neck_w0 = conv0.weight.detach().flatten(1)
            self.neck_w2 = conv2.weight.detach().contiguous(memory_format=torch.channels_last)
            self.ln = [(m.weight.detach(), m.bias.detach(), m.eps) for m in (ln1, ln2)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``Bx3xHxW`` -> ``BxCoutxH/4xW/4``."""
        return torch.stack([self._one(img) for img in x])

    def _one(self, img: torch.Tensor) -> torch.Tensor:
        (w1, b1), (w2, b2) = self.pe
        c, h, w = img.shape
        x = _gelu_(torch.addmm(b1[:, None], w1, img.reshape(c, h * w)))
        x = torch.addmm(b2[:, None], w2, x).view(-1, h, w)  # channels first for stage 0
        for ops in self.stages:
            for op in ops:
                x = op(x)
        (g1, be1, eps1), (g2, be2, eps2) = self.ln
        c = self.neck_w0.shape[0]
        x = F.layer_norm(F.linear(x, self.neck_w0), (c,), g1, be1, eps1)
        x = F.conv2d(x.permute(2, 0, 1)[None], self.neck_w2, None, 1, 1)[0].permute(1, 2, 0)
        return F.layer_norm(x, (c,), g2, be2, eps2).permute(2, 0, 1)
