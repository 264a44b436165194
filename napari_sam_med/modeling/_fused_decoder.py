"""The fast path of :mod:`~napari_sam_med.modeling.mask_decoder` (its plain
:class:`~napari_sam_med.modeling.mask_decoder.MaskDecoder` is the reference; the equivalence
tests sit beside this module's name: ``tests/test_fused_decoder.py``).

Built lazily by ``MaskDecoder`` for inference calls (eval mode, gradients disabled) when its
transformer is a :class:`~napari_sam_med.modeling.transformer.TwoWayTransformer`. It computes
the same function as the plain modules (within float32 rounding); only the order of the
products changes:

* **Low-rank cross-attention.** A prompt has few tokens (``N``, e.g. 7 for a box) against
  ``h*w`` image tokens (4096). Instead of projecting all image tokens to keys and values, the
  ``heads*N`` query (or key) vectors are pulled back through the projection weights, so every
  product with the image tokens has ``heads*N`` (56) instead of ``C`` (128..256) columns:

  - token->image: ``q_h . (W_k,h x + b_k,h) = (W_k,h^T q_h) . x + q_h . b_k,h`` and, as the
    softmax rows sum to one, ``sum_j a_j (W_v,h x_j + b_v,h) = W_v,h (sum_j a_j x_j) + b_v,h``;
  - image->token: the scores are ``x . (W_q,h^T k_h) + b_q,h . k_h`` and the output projection
    is applied to the ``N`` values before mixing them.

* **Transposed convolutions as matrix products.** Both 2x2 stride-2 transposed convolutions
  of the output upscaling are one matrix product per pixel, on channels-last tensors; the
  sub-pixel layout is only untangled once, on the final masks.
* Only the mask tokens that are returned (1 or ``num_multimask_outputs``) are decoded to
  masks; the token-major positional encoding is cached per ``image_pe`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .common import MLP, LayerNorm2d
    from .mask_decoder import MaskDecoder
    from .transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer


# Embedding pixels per band of the output upscaling (its intermediates are 16x larger).
_BAND_PIXELS = 2048


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


def _heads(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Split the output rows of a ``D x C`` weight into ``heads x D/heads x C``."""
    return w.reshape(heads, w.shape[0] // heads, w.shape[1])


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _linears(
    mlp: MLP, w: Callable[[torch.Tensor], torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, bias)`` of each linear layer of ``mlp``, through ``w`` (keep or detach)."""
    return [(w(lin.weight), w(lin.bias)) for lin in cast("Iterable[nn.Linear]", mlp.layers)]


class _Attn:
    """Weights of one :class:`Attention` (detached unless ``grad``), split per head."""

    def __init__(self, attn: Attention, grad: bool = False) -> None:
        w = _keep if grad else _detach
        self.h = attn.num_heads
        self.d = attn.internal_dim // attn.num_heads
        self.scale = self.d**-0.5
        self.wq, self.bq = w(attn.q_proj.weight), w(attn.q_proj.bias)
        self.wk, self.bk = w(attn.k_proj.weight), w(attn.k_proj.bias)
        self.wv, self.bv = w(attn.v_proj.weight), w(attn.v_proj.bias)
        self.wo, self.bo = w(attn.out_proj.weight), w(attn.out_proj.bias)
        self.wk_h = _heads(self.wk, self.h)  # H x d x C
        self.wq_h = _heads(self.wq, self.h)
        self.bk_h, self.bq_h = self.bk.view(self.h, self.d), self.bq.view(self.h, self.d)
        # out_proj per head, transposed: H x d x C (row i of head h maps value dim i to C)
        self.wo_h = self.wo.t().reshape(self.h, self.d, -1)

    def tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain attention among few tokens: ``BxNqxC``, ``BxNkxC`` -> ``BxNqxC``."""
        b, nq, _ = q.shape
        qh = F.linear(q, self.wq, self.bq).view(b, nq, self.h, self.d).transpose(1, 2)
        kh = F.linear(k, self.wk, self.bk).view(b, -1, self.h, self.d).transpose(1, 2)
        vh = F.linear(v, self.wv, self.bv).view(b, -1, self.h, self.d).transpose(1, 2)
        out = F.scaled_dot_product_attention(qh, kh, vh)
        return F.linear(out.transpose(1, 2).reshape(b, nq, -1), self.wo, self.bo)

    def token_to_image(
        self, q: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor
    ) -> torch.Tensor:
        """Tokens ``BxNxC`` attend to image tokens ``BkxHWxC`` (``Bk`` 1 or B); -> ``BxNxC``."""
        b, n, _ = q.shape
        qh = F.linear(q, self.wq, self.bq).view(b, n, self.h, self.d)
        # pulled-back queries: B x (H*N) x C, and their constant score offsets B x (H*N) x 1
        q_back = torch.einsum("bnhd,hdc->bhnc", qh, self.wk_h).reshape(b, self.h * n, -1)
        q_off = torch.einsum("bnhd,hd->bhn", qh, self.bk_h).reshape(b, self.h * n, 1)
        scores = torch.baddbmm(
            q_off, q_back * self.scale, k_img.transpose(1, 2).expand(b, -1, -1), beta=self.scale
        )
        mixed = torch.bmm(scores.softmax(dim=-1), v_img.expand(b, -1, -1))  # B x (H*N) x C
        vh = torch.einsum("bhnc,hdc->bnhd", mixed.view(b, self.h, n, -1), _heads(self.wv, self.h))
        vh = vh + self.bv.view(self.h, self.d)
        return F.linear(vh.reshape(b, n, -1), self.wo, self.bo)

    def image_to_token(
        self, q_img: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Image tokens ``BqxHWxC`` (``Bq`` 1 or B) attend to tokens ``BxNxC``.

        Returns ``residual + attention`` (``BxHWxC``) in one pass. The output bias is spread
        over the values, ``1/H`` per head: each head's attention weights sum to one.
        """
        b, n, _ = k.shape
        kh = F.linear(k, self.wk, self.bk).view(b, n, self.h, self.d)
        vh = F.linear(v, self.wv, self.bv).view(b, n, self.h, self.d)
        k_back = torch.einsum("bnhd,hdc->bhnc", kh, self.wq_h).reshape(b, self.h * n, -1)
        k_off = torch.einsum("bnhd,hd->bhn", kh, self.bq_h).reshape(b, self.h * n, 1)
        # scores laid out B x (H*N) x HW so that the softmax over N runs along a long axis
        scores = torch.baddbmm(
            k_off, k_back * self.scale, q_img.transpose(1, 2).expand(b, -1, -1), beta=self.scale
        )
        attn = scores.view(b, self.h, n, -1).softmax(dim=2).view(b, self.h * n, -1)
        v_out = torch.einsum("bnhd,hdc->bhnc", vh, self.wo_h) + self.bo / self.h
        return torch.baddbmm(residual, attn.transpose(1, 2), v_out.reshape(b, self.h * n, -1))


class _Block:
    """A :class:`TwoWayAttentionBlock`'s weights (detached unless ``grad``)."""

    def __init__(self, blk: TwoWayAttentionBlock, grad: bool = False) -> None:
        w = _keep if grad else _detach
        self.skip_pe = blk.skip_first_layer_pe
        self.self_attn = _Attn(blk.self_attn, grad)
        self.t2i = _Attn(blk.cross_attn_token_to_image, grad)
        self.i2t = _Attn(blk.cross_attn_image_to_token, grad)
        self.norms = [(w(n.weight), w(n.bias), n.eps) for n in
                      (blk.norm1, blk.norm2, blk.norm3, blk.norm4)]  # fmt: skip
        mlp = blk.mlp
        self.mlp = (w(mlp.lin1.weight), w(mlp.lin1.bias),
                    w(mlp.lin2.weight), w(mlp.lin2.bias))  # fmt: skip

    def _norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        w, b, eps = self.norms[i]
        return F.layer_norm(x, w.shape, w, b, eps)

    def __call__(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_pe:
            queries = self.self_attn.tokens(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn.tokens(q, q, queries)
        queries = self._norm(0, queries)
        keys_pe = keys + key_pe
        q = queries + query_pe
        queries = self._norm(1, queries + self.t2i.token_to_image(q, keys_pe, keys))
        w1, b1, w2, b2 = self.mlp
        queries = self._norm(2, queries + F.linear(F.relu(F.linear(queries, w1, b1)), w2, b2))
        q = queries + query_pe
        keys = self._norm(3, self.i2t.image_to_token(keys_pe, q, queries, keys))
        return queries, keys


class FusedMaskDecoder:
    """Callable twin of a :class:`MaskDecoder` with a two-way transformer.

    With ``grad=False`` (inference) it holds detached weights and works in place where it can.
    With ``grad=True`` (training) it uses the parameters themselves and only out-of-place ops,
    so autograd differentiates the same reordered products (build a fresh one per forward: the
    per-head weight views are derived from the current parameters).
    """

    def __init__(self, dec: MaskDecoder, grad: bool = False) -> None:
        w = _keep if grad else _detach
        self.grad = grad
        tr = cast("TwoWayTransformer", dec.transformer)  # MaskDecoder builds us only for one
        self.num_mask_tokens = dec.num_mask_tokens
        self.blocks = [_Block(b, grad) for b in cast("Iterable[TwoWayAttentionBlock]", tr.layers)]
        self.final = _Attn(tr.final_attn_token_to_image, grad)
        fn = tr.norm_final_attn
        self.final_norm = (w(fn.weight), w(fn.bias), fn.eps)
        self.out_tokens = w(torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]))
        up = dec.output_upscaling  # ConvTranspose2d, LayerNorm2d, GELU, ConvTranspose2d, GELU
        up1, up2 = cast(nn.ConvTranspose2d, up[0]), cast(nn.ConvTranspose2d, up[3])
        ln = cast("LayerNorm2d", up[1])
        # ConvTranspose2d weight Cin x Cout x 2 x 2 -> (ky, kx, Cout) x Cin for F.linear
        self.c1, self.c2 = up1.out_channels, up2.out_channels
        self.w1 = w(up1.weight).permute(2, 3, 1, 0).reshape(-1, up1.in_channels)
        self.b1 = w(cast(torch.Tensor, up1.bias)).repeat(4)  # both convs are built with a bias
        self.w2 = w(up2.weight).permute(2, 3, 1, 0).reshape(-1, up2.in_channels)
        self.b2 = w(cast(torch.Tensor, up2.bias)).repeat(4)
        self.ln = (w(ln.weight), w(ln.bias), ln.eps)
        self.hyper = [
            _linears(mlp, w) for mlp in cast("Iterable[MLP]", dec.output_hypernetworks_mlps)
        ]
        self.iou_head = _linears(dec.iou_prediction_head, w)
        self.iou_sigmoid = dec.iou_prediction_head.sigmoid_output
        self._pe_src: torch.Tensor | None = None
        self._pe_key: tuple = ()
        self._pe_tokens: torch.Tensor | None = None

    def _key_pe(self, image_pe: torch.Tensor) -> torch.Tensor:
        """``1xCxhxw`` -> contiguous ``1x(h*w)xC``, cached while ``image_pe`` is unchanged."""
        version = -1 if image_pe.is_inference() else image_pe._version  # no counter there
        key = (version, tuple(image_pe.shape), image_pe.dtype, image_pe.device)
        tokens = self._pe_tokens
        if tokens is None or self._pe_src is not image_pe or self._pe_key != key:
            tokens = image_pe[:1].flatten(2).transpose(1, 2).contiguous()
            self._pe_tokens, self._pe_src, self._pe_key = tokens, image_pe, key
        return tokens

    def __call__(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mask_ids: slice,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``B x M x 4h x 4w`` for the tokens in ``mask_ids`` and IoU ``B x M``."""
        b = sparse.shape[0]
        _, c, h, w = image_embeddings.shape
        tokens = torch.cat([self.out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = (image_embeddings + dense).flatten(2).transpose(1, 2).contiguous()  # Bs x HW x C
        if image_pe.shape[0] == 1:
            key_pe = self._key_pe(image_pe)
        else:
            key_pe = image_pe.flatten(2).transpose(1, 2)
        queries, keys = tokens, src
        for blk in self.blocks:
            queries, keys = blk(queries, keys, tokens, key_pe)
        att = self.final.token_to_image(queries + tokens, keys + key_pe, keys)
        g, beta, eps = self.final_norm
        queries = F.layer_norm(queries + att, g.shape, g, beta, eps)
        iou = queries[:, 0]
        for i, (wt, bs) in enumerate(self.iou_head):
            iou = F.linear(iou, wt, bs)
            if i < len(self.iou_head) - 1:
                iou = F.relu(iou)
        if self.iou_sigmoid:
            iou = torch.sigmoid(iou)
        if self.grad:  # all masks, then the selection: unselected heads get zero gradients
            ids = range(self.num_mask_tokens)
            hyper = torch.stack([self._hyper(i, queries[:, 1 + i]) for i in ids], dim=2)
            return self._masks(keys.expand(b, -1, -1), hyper, h, w)[:, mask_ids], iou[:, mask_ids]
        ids = range(self.num_mask_tokens)[mask_ids]
        hyper = torch.stack([self._hyper(i, queries[:, 1 + i]) for i in ids], dim=2)  # BxC2xM
        return self._masks(keys.expand(b, -1, -1), hyper, h, w), iou[:, mask_ids]

    def _hyper(self, i: int, token: torch.Tensor) -> torch.Tensor:
        layers = self.hyper[i]
        for j, (wt, bs) in enumerate(layers):
            token = F.linear(token, wt, bs)
            if j < len(layers) - 1:
                token = F.relu(token)
        return token

    def _masks(self, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Upscale ``BxHWxC`` image tokens 4x and apply the ``BxC2xM`` hypernetwork outputs.

        Runs in bands of embedding rows so that the 4x and 16x larger intermediates stay small.
        """
        b, m = keys.shape[0], hyper.shape[2]
        g, beta, eps = self.ln
        grid = keys.view(b, h, w, -1)
        if self.grad:  # training: out of place, in one band (autograd keeps it all anyway)
            x = F.linear(grid, self.w1, self.b1).view(b, -1, self.c1)
            x = F.gelu(F.layer_norm(x, (self.c1,), g, beta, eps))
            x = F.gelu(F.linear(x, self.w2, self.b2)).view(b, -1, self.c2)
            band = torch.bmm(x, hyper).view(b, h, w, 2, 2, 2, 2, m)
            return band.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)
        out = keys.new_empty(b, m, h, 4, w, 4)
        rows = max(1, _BAND_PIXELS // w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            x = F.linear(grid[:, r0:r1], self.w1, self.b1).view(b, -1, self.c1)
            x = _gelu_(F.layer_norm(x, (self.c1,), g, beta, eps))
            x = _gelu_(F.linear(x, self.w2, self.b2)).view(b, -1, self.c2)
            band = torch.bmm(x, hyper).view(b, r1 - r0, w, 2, 2, 2, 2, m)
            # (y, x, ky1, kx1, ky2, kx2) -> rows 4y + 2ky1 + ky2, cols 4x + 2kx1 + kx2
            out[:, :, r0:r1].view(b, m, r1 - r0, 2, 2, w, 2, 2).copy_(
                band.permute(0, 7, 1, 3, 5, 2, 4, 6)
            )
        return out.view(b, m, 4 * h, 4 * w)
