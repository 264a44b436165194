"""The one place where the compute device and mixed precision are decided.

Everything that runs a model (predictor, 3D engine, CLI, plugin, training) calls
:func:`resolve_device` and, for mixed precision, :func:`autocast_context`. Nothing
else in the code base looks at ``torch.cuda`` to pick a device, and nothing
defaults to ``"cuda"``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import torch

logger = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device request into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA if available, else Apple MPS, else CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device`` or ``None`` (= auto).

    Returns:
        The device to use.

    Raises:
        ValueError: for an unknown device string, or a CUDA/MPS device that is not
            available on this machine (the message says what is available).
    """
    if isinstance(device, torch.device):
        return device
    text = "auto" if device is None else str(device).strip().lower()
    if not _DEVICE_RE.match(text):
        raise ValueError(
            f"device={device!r} is not understood; "
            "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        idx = int(text.split(":")[1]) if ":" in text else 0
        if idx >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    if text == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device={device!r} was requested but MPS is not available here")
    return torch.device(text)


def amp_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """Pick the autocast dtype for a device.

    Args:
        device: the compute device.
        requested: ``"auto"`` (bf16 where the GPU supports it, else fp16 on CUDA; none on
            CPU), ``"bf16"``, ``"fp16"``, ``"fp32"``/``"none"``.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None`` (no autocast).
    """
    req = requested.lower()
    if req in ("fp32", "none", "float32", "no"):
        return None
    if req in ("bf16", "bfloat16"):
        return torch.bfloat16
    if req in ("fp16", "float16", "half"):
        if device.type != "cuda":
            raise ValueError(f"amp={requested!r} (float16) needs a CUDA device, got {device}")
        return torch.float16
    if req != "auto":
        raise ValueError(f"amp={requested!r} is not understood; expected auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


PRECISIONS = ("fp32", "bf16", "int8")
_PRECISION_ALIASES = {"fast": "bf16", "bfloat16": "bf16", "float32": "fp32", "qint8": "int8"}


def inference_precision(precision: str | None) -> str:
    """The image encoder's inference precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.

    This is the one place where the inference precision is decided. ``"fp32"`` (default,
    ``None``) is exact; ``"bf16"`` (the fast mode, alias ``"fast"``) runs the image encoder
    under bfloat16 autocast (about 0.65x the fp32 time on CPUs with AVX512-BF16); ``"int8"``
    runs the TinyViT encoder's transformer linear layers as dynamic int8 products (CPU only;
    about 0.8x the fp32 time with AVX512-VNNI). Both change the embeddings by a few per cent
    and fail the Dice rule, so both are opt-in (``docs/speed.md`` has the measured Dice
    change). Prompt decoding stays fp32.

    Raises:
        ValueError: an unknown precision.
    """
    text = "fp32" if precision is None else str(precision).strip().lower()
    text = _PRECISION_ALIASES.get(text, text)
    if text not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {', '.join(PRECISIONS)}")
    return text


def inference_dtype(precision: str | None) -> torch.dtype | None:
    """The autocast dtype of the image encoder at inference (``None``: no autocast).

    ``torch.bfloat16`` for ``"bf16"``; ``None`` for ``"fp32"`` and ``"int8"`` (int8 is not an
    autocast mode). See :func:`inference_precision`.

    Raises:
        ValueError: an unknown precision.
    """
    return torch.bfloat16 if inference_precision(precision) == "bf16" else None


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Return an autocast context for ``device`` and ``dtype`` (a no-op when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
