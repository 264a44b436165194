"""Fused CPU kernels for the inference twins: oneDNN ops with plain-aten fallbacks.

PyTorch's x86/ARM CPU builds ship oneDNN ("mkldnn") and expose its fused primitives as
``torch.ops.mkldnn._linear_pointwise`` and ``torch.ops.mkldnn._convolution_pointwise`` (the
operators ``torch.compile`` itself emits for CPU inference). They run a matrix product or a
convolution with the bias and a GELU (or a residual add) applied while the output is still in
cache, and on an AVX-512 CPU oneDNN's fp32 GEMM is also faster than the default one for the
encoder's shapes. All results are float32 and match the aten ops to rounding (about 1e-7).

The fused ops are used only for float32 CPU tensors outside autocast and only when a probe call
works on this build; otherwise every function falls back to the aten ops (so autocast, other
dtypes and other devices behave exactly as before). A weight given as an
:class:`~._int8_linear.Int8Weight` runs the dynamic int8 product instead (``precision="int8"``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._int8_linear import Int8Weight


@functools.cache
def onednn_available() -> bool:
    """Whether the fused oneDNN operators exist and run on this build (probed once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, w = torch.ones(2, 4), torch.ones(3, 4)
        out = torch.ops.mkldnn._linear_pointwise(x, w, torch.zeros(3), "gelu", [], "none")
        img = torch.ones(1, 2, 3, 3).contiguous(memory_format=torch.channels_last)
        conv = torch.ops.mkldnn._convolution_pointwise(
            img, torch.ones(2, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], 2, "none", [], ""
        )
        return bool(torch.allclose(out, F.gelu(x @ w.t()))) and conv.shape == img.shape
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _fused(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not _cpu_autocast()
        and onednn_available()
    )


def linear(
    x: torch.Tensor, w: torch.Tensor | Int8Weight, b: torch.Tensor | None, gelu: bool = False
) -> torch.Tensor:
    """``gelu?(x @ w.T + b)`` for ``...xK`` input and ``NxK`` weight (exact-erf GELU).

    ``w`` may be an :class:`Int8Weight` (``precision="int8"``; it holds its own bias, pass
    ``b=None``).
    """
    if isinstance(w, Int8Weight):
        y = w(x)
        return torch.ops.aten.gelu_(y) if gelu else y
    if _fused(x):
        op = torch.ops.mkldnn._linear_pointwise
        return op(x, w, b, "gelu", [], "none") if gelu else op(x, w, b, "none", [], "")
    y = F.linear(x, w, b)
    return torch.ops.aten.gelu_(y) if gelu else y


def linear_add(
    x: torch.Tensor, w: torch.Tensor | Int8Weight, b: torch.Tensor | None, other: torch.Tensor
) -> torch.Tensor:
    """``x @ w.T + b + other`` (``other`` has the output's shape): a residual in the epilogue."""
    if isinstance(w, Int8Weight):
        return w(x).add_(other)
    if _fused(x) and other.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
    return F.linear(x, w, b).add_(other)


def conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    padding: tuple[int, int],
    stride: int = 1,
    groups: int = 1,
    gelu: bool = False,
) -> torch.Tensor:
    """``gelu?(conv2d(x))`` on a ``1xCxHxW`` map; channels-last in, channels-last out.

    Pass ``w`` in ``torch.channels_last`` memory format for the fused path.
    """
    y = F.conv2d(x, w, b, stride, padding, 1, groups)
    return torch.ops.aten.gelu_(y) if gelu else y
