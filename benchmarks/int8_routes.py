"""Dynamic int8 routes for the LiteMedSAM image encoder, for ``bench_encoder.py --int8``.

Two ways to run the encoder's linear layers with int8 weights and dynamically quantised
activations (scale per call, from the activation's range), each timed against our fp32 fused
encoder in the same interleaved rounds:

* ``quantize_dynamic``: ``torch.ao.quantization.quantize_dynamic`` on the plain (unfused)
  modules, every ``nn.Linear`` (attention and MLP layers) -> int8; the 1x1 convolutions of
  the MBConv stages stay float32 convolutions. Engine: the build's default (``x86``).
* ``fused + linear_dynamic``: our fused twin with its ``linear``/``linear_add`` swapped for
  ``torch.ops.quantized.linear_dynamic`` on weights quantised per output channel (symmetric)
  and prepacked once, with the given quantised engine (``fbgemm``, ``x86`` or ``onednn``).
  GELU and residual adds run after the product (the int8 ops have no fused epilogue).
  ``scope="blocks"`` quantises only the transformer blocks' layers (qkv, proj, fc1, fc2);
  ``scope="all"`` also the 1x1 convolutions of the MBConv strips, patch embedding and neck.

``ours int8 (precision=int8)`` is what the package ships (``build_sam(precision="int8")``:
the ``blocks`` scope, engine ``x86`` where available, ``modeling/_int8_linear.py``); the
routes above are kept to show how it was chosen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from napari_sam_med.modeling import _fused_tiny_vit as fused_mod


def _quantise(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 quantisation of an ``NxK`` weight."""
    scale = (w.abs().amax(dim=1).clamp_min(1e-12) / 127).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    return torch.quantize_per_channel(w.contiguous(), scale, zero, 0, torch.qint8)


def _block_weights(enc: torch.nn.Module) -> set[int]:
    """``data_ptr`` of every weight the fused twin's transformer blocks pass to ``linear``."""
    ptrs: set[int] = set()
    for op in enc._fast.ops:
        if isinstance(op, fused_mod._Block):
            ptrs |= {t.data_ptr() for t in (op.qkv_w, op.proj_w, op.fc1_w, op.fc2_w)}
    return ptrs


class Int8Linear:
    """``linear``/``linear_add`` replacements with prepacked int8 weights (one engine)."""

    def __init__(self, engine: str, only: set[int] | None, reduce_range: bool = False) -> None:
        self.engine, self.only, self.reduce_range = engine, only, reduce_range
        self.packed: dict[tuple[int, int], object] = {}
        self.orig_linear, self.orig_add = fused_mod.linear, fused_mod.linear_add

    def _pack(self, w: torch.Tensor, b: torch.Tensor | None) -> object:
        key = (w.data_ptr(), 0 if b is None else b.data_ptr())
        if key not in self.packed:
            self.packed[key] = torch.ops.quantized.linear_prepack(_quantise(w), b)
        return self.packed[key]

    def _wanted(self, w: torch.Tensor) -> bool:
        return w.dim() == 2 and (self.only is None or w.data_ptr() in self.only)

    def linear(self, x, w, b, gelu=False):
        if not self._wanted(w):
            return self.orig_linear(x, w, b, gelu)
        y = torch.ops.quantized.linear_dynamic(x.contiguous(), self._pack(w, b), self.reduce_range)
        return torch.ops.aten.gelu_(y) if gelu else y

    def linear_add(self, x, w, b, other):
        if not self._wanted(w):
            return self.orig_add(x, w, b, other)
        return self.linear(x, w, b).add_(other)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Swap the fused twin's kernels and the quantised engine for the duration."""
        engine = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        fused_mod.linear, fused_mod.linear_add = self.linear, self.linear_add
        try:
            yield
        finally:
            fused_mod.linear, fused_mod.linear_add = self.orig_linear, self.orig_add
            torch.backends.quantized.engine = engine


def fused_int8(enc: torch.nn.Module, engine: str, scope: str) -> Callable[[torch.Tensor], object]:
    """Our fused encoder ``enc`` with int8 linear layers (``scope`` ``"blocks"`` or ``"all"``)."""
    ops = Int8Linear(engine, _block_weights(enc) if scope == "blocks" else None)

    def run(x: torch.Tensor) -> torch.Tensor:
        with ops.active():
            return enc(x)

    return run


def plain_quantize_dynamic() -> Callable[[torch.Tensor], object]:
    """``quantize_dynamic`` of the plain LiteMedSAM encoder's ``nn.Linear`` layers."""
    from napari_sam_med import build_sam

    plain = build_sam("lite_medsam", device="cpu", inference=False).image_encoder.eval()
    q = torch.ao.quantization.quantize_dynamic(plain, {torch.nn.Linear}, dtype=torch.qint8)
    return q


def add_int8(enc, x, contenders, outputs, engines: list[str]) -> None:
    """Add every int8 route to the benchmark's contenders (and its output for the error)."""
    from napari_sam_med import build_sam

    mode = build_sam("lite_medsam", device="cpu", precision="int8")
    routes: dict[str, Callable[[torch.Tensor], object]] = {
        "ours int8 (precision=int8)": mode.encode_image,
        "int8 quantize_dynamic": plain_quantize_dynamic(),
    }
    for engine in engines:
        if engine not in torch.backends.quantized.supported_engines:
            print(f"int8: quantised engine {engine!r} is not in this build; skipped")
            continue
        for scope in ("blocks", "all"):
            routes[f"int8 fused {engine} {scope}"] = fused_int8(enc, engine, scope)
    for name, fn in routes.items():
        outputs[name] = fn(x)
        contenders[name] = (lambda f: lambda: f(x))(fn)
