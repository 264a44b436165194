"""Where a 3D box start goes wrong: per-slice Dice and mask area of each model on one case.

For one case of a case table (``training/splits/dev_pool.csv``), every model runs the 3D
benchmark's ``box3d`` start (the label's 3D box, propagated by the engine) and, on five slices
spread over the object, single-slice predictions from the slice's tight box, the tight box grown
by 6 px, and the 3D box's x-y extent. It prints the 3D Dice, the mean area ratio (mask / truth)
and Dice of each 2D prompt kind, and a per-slice table (truth area; each model's area and Dice).
A model whose masks come out smaller than the truth on single slices shrinks further with every
propagated slice (each slice's box comes from its neighbour's mask): this is how the focal
loss's class weight was found to matter (``training/results/sam_med_lite_v2/loss_alpha_check``).

    python benchmarks/box_start_slices.py STS_018/CT lite_medsam sam_med_lite \
        [--table training/splits/dev_pool.csv] [--cache-dir /tmp/emb] [--flip]

Look only at training patients with it: tuning on validation patients is not allowed.
``--flip`` turns the volume by 180 degrees in-plane (what RAS-ordered training slices look like).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_sam_med import build_sam
from napari_sam_med.bench3d.cases import load_cases
from napari_sam_med.bench3d.clicks import box3d_of
from napari_sam_med.bench3d.runner import load_subject
from napari_sam_med.metrics import dice
from napari_sam_med.volume.cache import EmbeddingCache
from napari_sam_med.volume.objects import ObjectSegmentation
from napari_sam_med.volume.propagate import PropagationSettings, Propagator
from napari_sam_med.volume.slices import SliceSegmenter

KINDS = ("tight", "tight+6", "box3d")


def box_start(seg: SliceSegmenter, box: list[int]) -> ObjectSegmentation:
    """The engine's 3D box start (default settings, the model's own rules), run to the end."""
    prop, obj = Propagator(seg, PropagationSettings()), ObjectSegmentation(1)
    for _ in prop.box3d(obj, box):
        pass
    return obj


def slice_prompts(gt: np.ndarray, box: list[int], kind: str, z: int) -> np.ndarray:
    if kind == "box3d":
        return np.asarray([box[0], box[1], box[3], box[4]], np.float32)
    ys, xs = np.nonzero(gt[z])
    k = 0 if kind == "tight" else 6
    return np.asarray([xs.min() - k, ys.min() - k, xs.max() + k, ys.max() + k], np.float32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case")
    p.add_argument("models", nargs="+", help="registry names or checkpoint files")
    p.add_argument("--table", default="training/splits/dev_pool.csv")
    p.add_argument("--cache-dir", default=None, help="on-disk embedding cache")
    p.add_argument("--flip", action="store_true", help="turn the slices by 180 degrees")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    found = [c for c in load_cases(args.table) if c.name == args.case]
    if not found:
        raise SystemExit(f"{args.table}: no case named {args.case!r}")
    sub = load_subject(found[0])
    image, gt = sub.image.array, sub.gt
    if args.flip:
        image, gt = (np.ascontiguousarray(a[:, ::-1, ::-1]) for a in (image, gt))
    box = box3d_of(gt)
    zs = list(range(box[2], box[5] + 1))
    picks = zs[len(zs) // 4 :: max(len(zs) // 6, 1)][:5]
    cache = EmbeddingCache(args.cache_dir, memory_bytes=2 * 2**30)
    masks = {}
    print(f"{args.case}{' (turned 180 degrees)' if args.flip else ''}: 3D box {box}")
    for name in args.models:
        seg = SliceSegmenter(
            build_sam(name, device="cpu"), image, sub.preset, cache, spacing=sub.image.spacing
        )
        masks[name] = box_start(seg, box).to_mask(gt.shape)
        print(f"{name}: 3D Dice {dice(masks[name], gt):.4f}")
        for kind in KINDS:
            preds = [seg.predict(z, box=slice_prompts(gt, box, kind, z)).mask for z in picks]
            ratio = np.mean([m.sum() / gt[z].sum() for m, z in zip(preds, picks, strict=True)])
            d2 = np.mean([dice(m, gt[z]) for m, z in zip(preds, picks, strict=True)])
            print(f"    2D {kind:8s} slices {picks}: area/truth {ratio:.3f}  Dice {d2:.3f}")
    print("\n  z  truth " + " ".join(f"{n[-24:]:>24s}" for n in args.models))
    for z in zs:
        cells = [f"{masks[n][z].sum():9d} px {dice(masks[n][z], gt[z]):.3f}" for n in args.models]
        print(f"{z:3d} {gt[z].sum():6d} " + " ".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
