"""Dynamic int8 linear layers for the fused TinyViT twin (``precision="int8"``).

A weight is quantised once per output channel (symmetric int8) and prepacked for PyTorch's
quantised CPU engine; each call quantises its activations with a scale taken from their
range (``torch.ops.quantized.linear_dynamic``), multiplies in int8 with int32 accumulation and
returns float32. On a CPU with AVX512-VNNI this measured 0.80-0.83x the time of our fp32 fused
encoder (``benchmarks/bench_encoder.py --int8``; bf16 0.65-0.68x on the same CPU); the
embedding changes by up to ~9% of its range and the 3D benchmark's mean Dice by -0.022 to
-0.030, so the mode is opt-in, off by default (``docs/speed.md``).

Only the transformer blocks' linear layers (qkv, proj, fc1, fc2) are quantised: quantising the
1x1 convolutions of the MBConv stages as well was not reliably faster and tripled the error.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch

# Preferred quantised engines: x86 (fbgemm/oneDNN picked per shape) on Intel/AMD builds,
# then fbgemm, oneDNN, and qnnpack (ARM).
_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


@functools.cache
def int8_engine() -> str | None:
    """The quantised engine used to prepack int8 weights (``None``: none works in this build).

    Probed once with a small product, so a build without the quantised operators (they are
    deprecated in recent torch releases) makes ``precision="int8"`` a clear error, not a crash.
    """
    supported = torch.backends.quantized.supported_engines
    for engine in (e for e in _ENGINES if e in supported):
        try:
            w = torch.eye(4)
            packed = _prepack(w, torch.ones(4), engine)
            y = torch.ops.quantized.linear_dynamic(torch.ones(2, 4), packed, False)
            if torch.allclose(y, torch.full((2, 4), 2.0), atol=0.05):
                return engine
        except (RuntimeError, AttributeError, NotImplementedError):
            continue
    return None


def _prepack(w: torch.Tensor, b: torch.Tensor | None, engine: str) -> object:
    """Per-output-channel symmetric int8 quantisation of ``w``, prepacked for ``engine``."""
    scale = (w.abs().amax(dim=1).clamp_min(1e-12) / 127).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantised tensors are deprecated (still in torch 2.13)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
    with _engine(engine):  # the packed object keeps its engine's kernels
        return torch.ops.quantized.linear_prepack(qweight, b)


@functools.cache
def reduce_range() -> bool:
    """Quantise activations to 7 bits unless the CPU has VNNI int8 dot products.

    Without VNNI, x86 int8 GEMMs add pairs of u8 x s8 products in int16, which can saturate
    with 8-bit activations (PyTorch's own dynamic quantisation reduces the range on x86 for
    this reason). With VNNI the products accumulate in int32; 8 bits then gave 0.08 relative
    embedding error against 0.13 with 7 bits (LiteMedSAM, a CT slice).
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return True
    return "vnni" not in flags


def check_int8_available() -> None:
    """Raise a clear error when this torch build cannot run dynamic int8 linear layers."""
    if int8_engine() is None:
        raise ValueError(
            "precision='int8' needs a quantised CPU engine (x86, fbgemm, onednn or qnnpack); "
            f"this torch build has {torch.backends.quantized.supported_engines}; use fp32 or bf16"
        )


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class Int8Weight:
    """An ``NxK`` weight and its bias, quantised and prepacked; call it on ``...xK`` input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        check_int8_available()
        engine = int8_engine()
        assert engine is not None
        w = weight.detach().float().contiguous()
        b = None if bias is None else bias.detach().float().contiguous()
        self.packed = _prepack(w, b, engine)
        self.shape = tuple(w.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` in float32 (``x`` float32, any leading shape)."""
        return torch.ops.quantized.linear_dynamic(x.contiguous(), self.packed, reduce_range())
