"""Back-propagate each decoder pass of the interactive simulation as soon as it is done.

The 11 passes of :func:`training.simulate.simulate_train` are independent given the image
embedding: the mask prompt fed from one pass to the next is detached. So the gradient of the
step loss is the sum of the per-pass gradients, and each pass's autograd graph can be freed
right after its own backward instead of keeping all 11 alive until the end of the step. That
bounds the decoder's activation memory to one pass and keeps the allocator's working set small.

How it stays a normal ``loss.backward()`` for the caller (and for DDP, AMP and gradient
accumulation): per pass, :func:`torch.autograd.grad` computes the gradients with respect to the
trainable prompt-encoder/decoder parameters and to a detached copy of the embedding, without
touching ``.grad`` (so DDP's reduction hooks do not fire). They are summed in float32. At the
end :meth:`PassGradients.surrogate` returns a zero-valued term whose gradient is exactly those
sums: ``sum(p * G_p) + sum(embedding * G_emb)``; back-propagating it (with the encoder graph
behind the embedding) delivers the same gradients as back-propagating the summed loss, in one
backward call that DDP can reduce.

With a GradScaler (fp16 AMP) the caller passes the current scale, so the per-pass backward runs
on the scaled loss as GradScaler would; the surrogate divides it out again because the caller
scales the returned loss once more.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class PassGradients:
    """Accumulates per-pass gradients and hands them back through one surrogate term.

    Args:
        embeddings: ``(B, C, h, w)`` image embeddings as produced this step (with the encoder's
            graph when the encoder trains, else without grad).
        params: the parameters the passes use (prompt encoder and mask decoder); the ones that
            do not require grad are ignored.
        scale: the loss scale in use (GradScaler's current scale, 1.0 without fp16 AMP).
    """

    def __init__(
        self, embeddings: torch.Tensor, params: Iterable[nn.Parameter], scale: float = 1.0
    ) -> None:
        self.source = embeddings
        self.leaf = embeddings.detach().requires_grad_(embeddings.requires_grad)
        self.params = [p for p in params if p.requires_grad]
        self.scale = float(scale)
        self.sums: list[torch.Tensor | None] = [None] * (len(self.params) + 1)

    @property
    def enabled(self) -> bool:
        """Whether there is anything to differentiate (grad mode on, something trains)."""
        return torch.is_grad_enabled() and (bool(self.params) or self.leaf.requires_grad)

    def backward(self, loss: torch.Tensor) -> None:
        """Add the gradients of the scalar ``loss`` of one pass (its graph is freed)."""
        inputs = [*self.params, self.leaf] if self.leaf.requires_grad else list(self.params)
        grads = torch.autograd.grad(loss * self.scale, inputs, allow_unused=True)
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.float()
            self.sums[i] = g if self.sums[i] is None else self.sums[i].add_(g)

    def surrogate(self) -> torch.Tensor:
        """A zero-valued scalar whose gradient is the accumulated gradients (scale divided out)."""
        terms = [
            (p * g.to(p.dtype)).sum()
            for p, g in zip(self.params, self.sums[: len(self.params)], strict=True)
            if g is not None
        ]
        g_emb = self.sums[len(self.params)] if self.leaf.requires_grad else None
        if g_emb is not None:
            terms.append((self.source.float() * g_emb).sum())
        if not terms:
            return torch.zeros((), device=self.leaf.device)
        total = torch.stack([t.float() for t in terms]).sum() / self.scale
        return total - total.detach()
