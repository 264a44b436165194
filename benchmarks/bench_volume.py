"""3D engine vs the LiteMedSAM CVPR 2024 procedure on the dev cases of ``../shared/data``.

Quality (``--quality``, default): for every dev case, with the 3D box taken from the label,
the Dice of

* ``baseline``: the published LiteMedSAM CVPR 2024 3D procedure (middle slice from the 3D
  box's 2D box, then each next slice's box = previous mask's bounding box on the 256 grid
  grown by 3 px, the 3D box's 2D box again when the previous mask is empty), as published
  (``napari_sam_med.volume.baseline``);
* ``ours``: ``Propagator.box3d`` with its default settings;
* ``ours_2d``: one 2D box on the slice of largest tumour area, no z-range
  (``Propagator.key_slices``), and the stop reasons;
* ``clicks``: ``ours`` followed by up to 5 simulated corrective clicks, each at the centre of
  the largest 3D error region (positive in a miss, negative in a leak), as
  ``napari_sam_med.bench3d.clicks.next_click`` places them (``sam-med evaluate --mode 3d``
  is the full 3D interactive benchmark).

Embeddings are cached on disk (``--cache-dir``) so that quality runs are repeatable and
cheap; the numbers do not depend on the cache.

Speed (``--speed``): wall time per case, cold cache, on ``--speed-cases`` cases: the baseline
recomputes every slice's embedding with the reference-equivalent (unfused) TinyViT, ours runs
``Propagator.box3d`` with the inference-fused encoder and a lazy cache; then ours again with the
cache warm.

    .venv/bin/python benchmarks/bench_volume.py --quality --cache-dir /tmp/embcache
    .venv/bin/python benchmarks/bench_volume.py --speed --speed-cases STS_002_CT STS_002_MR_T1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_cases import box3d_of, dev_cases, dice  # noqa: E402

from napari_sam_med import build_sam  # noqa: E402
from napari_sam_med.bench3d.clicks import next_click, start_prompt  # noqa: E402
from napari_sam_med.preprocessing import guess_preset  # noqa: E402
from napari_sam_med.volume.baseline import baseline_box3d  # noqa: E402
from napari_sam_med.volume.cache import EmbeddingCache  # noqa: E402
from napari_sam_med.volume.objects import ObjectSegmentation  # noqa: E402
from napari_sam_med.volume.propagate import Propagator, run  # noqa: E402
from napari_sam_med.volume.slices import SliceSegmenter  # noqa: E402


def quality(args: argparse.Namespace) -> None:
    model = build_sam("lite_medsam", device="cpu")
    cache = EmbeddingCache(args.cache_dir)
    rows = []
    print(
        f"{'case':22s} {'mod':3s} {'slices':>6s} {'baseline':>8s} {'ours':>6s} {'2d-box':>6s}"
        f"  {'clicks 1..5':30s} stop"
    )
    for case in dev_cases():
        if args.cases and case.name not in args.cases:
            continue
        img, target, spacing = case.load()
        box = box3d_of(target)
        seg = SliceSegmenter(model, img, guess_preset(case.modality), cache, spacing=spacing)
        base = baseline_box3d(seg, box)
        obj = ObjectSegmentation(1)
        prop = Propagator(seg)
        run(prop.box3d(obj, box))
        ours = obj.to_mask(target.shape)
        zk, key_prompt = start_prompt("box2d", target)
        obj2 = ObjectSegmentation(1, key_prompts={zk: key_prompt})
        run(prop.key_slices(obj2))
        ours2d = obj2.to_mask(target.shape)
        clicks = []
        pred = ours
        for _ in range(args.clicks):
            c = next_click(pred, target)
            if c is None:
                clicks.append(dice(pred, target))
                continue
            run(prop.correct(obj, c.z, points=np.array([[c.x, c.y]]), labels=np.array([c.label])))
            pred = obj.to_mask(target.shape)
            clicks.append(dice(pred, target))
        row = (
            case.name,
            case.modality,
            box[5] - box[2] + 1,
            dice(base, target),
            dice(ours, target),
            dice(ours2d, target),
            clicks,
        )
        rows.append(row)
        stops = ",".join(f"{k}:{v}" for k, v in obj2.stop_reasons.items())
        print(
            f"{row[0]:22s} {row[1]:3s} {row[2]:6d} {row[3]:8.4f} {row[4]:6.4f} {row[5]:6.4f}  "
            f"{' '.join(f'{d:.3f}' for d in clicks):30s} {stops}",
            flush=True,
        )
    if not rows:
        print("no dev cases found under", dev_cases.__defaults__)
        return
    for mod in ("CT", "MR", None):
        sel = [r for r in rows if mod is None or r[1] == mod]
        if not sel:
            continue
        b, o, o2 = (float(np.mean([r[i] for r in sel])) for i in (3, 4, 5))
        cl = np.mean([r[6] for r in sel], axis=0) if args.clicks else []
        print(
            f"mean {mod or 'all'} (n={len(sel)}): baseline {b:.4f}  ours {o:.4f} "
            f"(+{o - b:.4f})  2d-box {o2:.4f} ({o2 / b:.3f}x baseline)  clicks "
            + " ".join(f"{d:.4f}" for d in cl)
        )


def speed(args: argparse.Namespace) -> None:
    ref_model = build_sam("lite_medsam", device="cpu", inference=False)
    fast_model = build_sam("lite_medsam", device="cpu")
    print(
        f"{'case':22s} {'slices':>6s} {'baseline s':>10s} {'ours cold s':>11s} {'ratio':>6s} "
        f"{'ours warm s':>11s}"
    )
    tb = to = 0.0
    for case in dev_cases():
        if case.name not in args.speed_cases:
            continue
        img, target, spacing = case.load()
        box = box3d_of(target)
        preset = guess_preset(case.modality)
        t = time.perf_counter()
        baseline_box3d(_NoCacheSegmenter(ref_model, img, preset), box)
        t_base = time.perf_counter() - t
        cache = EmbeddingCache(None)
        t = time.perf_counter()
        seg = SliceSegmenter(fast_model, img, preset, cache, spacing=spacing)
        run(Propagator(seg).box3d(ObjectSegmentation(1), box))
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        seg = SliceSegmenter(fast_model, img, preset, cache, spacing=spacing)
        run(Propagator(seg).box3d(ObjectSegmentation(1), box))
        t_warm = time.perf_counter() - t
        tb, to = tb + t_base, to + t_cold
        print(
            f"{case.name:22s} {box[5] - box[2] + 1:6d} {t_base:10.2f} {t_cold:11.2f} "
            f"{t_cold / t_base:6.3f} {t_warm:11.2f}",
            flush=True,
        )
    if tb:
        print(f"total: baseline {tb:.1f} s, ours cold {to:.1f} s, ratio {to / tb:.3f}")


class _NoCacheSegmenter(SliceSegmenter):
    """Recomputes a slice's embedding at every call, as the published procedure does."""

    def embedding(self, z: int):  # noqa: D102
        self.cache.clear_memory()
        return super().embedding(z)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quality", action="store_true")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--cache-dir", default=None, help="on-disk embedding cache for --quality")
    p.add_argument("--cases", nargs="*", default=None)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--speed-cases", nargs="*", default=["STS_002_CT", "STS_002_MR_T1", "brain1"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not dev_cases():
        sys.exit("../shared/data is not present beside the checkout; nothing to measure")
    if args.speed:
        speed(args)
    if args.quality or not args.speed:
        quality(args)


if __name__ == "__main__":
    main()
