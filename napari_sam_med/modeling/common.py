"""Small building blocks shared by the SAM modules: channel LayerNorm and MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weights_signature(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """``(data_ptr, version)`` of every parameter and buffer of ``module``.

    It changes whenever a weight is replaced (``load_state_dict``, ``.to()``, ``.data = ...``)
    or updated in place (optimiser steps), so derived inference copies can tell they are stale.
    """
    tensors = [*module.parameters(), *module.buffers()]
    # inference tensors (created under inference_mode) have no version counter
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``BxCxHxW`` tensor.

    Args:
        num_channels: Number of channels ``C``.
        eps: Added to the variance for numerical stability (SAM uses 1e-6).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (``BxCxHxW``) per pixel across channels; returns ``BxCxHxW``."""
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = centred.square().mean(dim=1, keepdim=True)
        normed = centred * torch.rsqrt(var + self.eps)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` used inside transformer blocks.

    Args:
        embedding_dim: Input and output feature size.
        mlp_dim: Hidden feature size.
        act: Activation class, instantiated once (GELU in the ViT, ReLU in the decoder).
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``...xembedding_dim``."""
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """Stack of ``num_layers`` linear layers with ReLU between them.

    Used for the mask decoder's hypernetworks and IoU head.

    Args:
        input_dim: Input feature size.
        hidden_dim: Feature size of every hidden layer.
        output_dim: Output feature size.
        num_layers: Number of linear layers (>= 1).
        sigmoid_output: Apply a sigmoid to the output.

    Raises:
        ValueError: If ``num_layers`` is smaller than 1.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs num_layers >= 1, got {num_layers}")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x`` of shape ``...xinput_dim``; returns ``...xoutput_dim``."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
