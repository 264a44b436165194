"""Turn a training checkpoint into the weights file the package ships.

    python -m training.ship RUN_DIR/checkpoints/best.pth --name sam_med_lite \
        --out napari_sam_med/model_weights/sam_med_lite_v2.pt [--overwrite] [--dtype float16]

Writes only the tensors that differ from the base model (LiteMedSAM) in float16 when float16
loses nothing measurable: on every slice of the sample phantoms, prompted by the box of each
labelled slice, the float16 file's masks must equal the float32 checkpoint's (IoU >= 0.999)
and its predicted IoUs differ by < 1e-3; otherwise the delta is kept in float32. Prints the
file's size and SHA-256 (the value for ``napari_sam_med.weights.PACKAGED``) and the
comparison, and writes a golden output (``tests/fixtures/<name>_golden.npz``) that the tests
compare the shipped file against.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_sam_med.build import build_sam, save_delta_checkpoint
from napari_sam_med.predictor import SamPredictor
from napari_sam_med.preprocessing import apply_intensity
from napari_sam_med.volume.io import read_volume
from napari_sam_med.weights import sha256_file

ROOT = Path(__file__).resolve().parents[1]
PHANTOMS = (("ct_phantom", "ct_soft_tissue"), ("mr_phantom", "mr"))


def golden_prompts() -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(slice image 0-255, box x0 y0 x1 y1)]`` on the labelled slices of the phantoms."""
    out = []
    for name, preset in PHANTOMS:
        vol = read_volume(ROOT / "sample_data" / f"{name}.nii.gz")
        lab = read_volume(ROOT / "sample_data" / f"{name}_label.nii.gz").array > 0
        img = apply_intensity(vol.array.astype(np.float32), preset)
        for z in np.nonzero(lab.any(axis=(1, 2)))[0][::3]:
            ys, xs = np.nonzero(lab[z])
            out.append((img[z], np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)))
    return out


def answers(model: torch.nn.Module, prompts) -> tuple[list[np.ndarray], np.ndarray]:
    """Masks and predicted IoUs of ``model`` on ``prompts``."""
    pred = SamPredictor(model)
    masks, ious = [], []
    for img, box in prompts:
        pred.set_image(img)
        m, iou, _ = pred.predict(box=box, multimask_output=False)
        masks.append(m[0])
        ious.append(float(iou[0]))
    return masks, np.array(ious)


def compare(a, b) -> tuple[float, float]:
    """``(min mask IoU, max |IoU prediction difference|)`` between two answer sets."""
    ious = []
    for x, y in zip(a[0], b[0], strict=True):
        union = (x | y).sum()
        ious.append(1.0 if union == 0 else (x & y).sum() / union)
    return float(min(ious)), float(np.abs(a[1] - b[1]).max())


def ship(
    ckpt: str,
    name: str,
    out: Path,
    base: str = "lite_medsam",
    engine: dict | None = None,
    dtype: str = "auto",
) -> dict:
    """Write the delta file and the golden; return facts.

    ``dtype``: ``auto`` keeps float16 when it is lossless on the phantoms' golden prompts (see
    the module doc) and falls back to float32; ``float16``/``float32`` force one (float16 when
    a measurement elsewhere, e.g. the 3D benchmark on training patients, shows that the few
    pixels it flips on the phantoms change nothing; the comparison is reported either way).

    ``engine``: the engine thresholds chosen for this model on training patients (e.g.
    ``{"min_iou": 0.3, "min_stability": 0.0}``), recorded as ``metadata["engine"]`` and read by
    :func:`napari_sam_med.capabilities.stop_thresholds`."""
    tuned = build_sam(ckpt, device="cpu", inference=False)
    tuned.config = dataclasses.replace(tuned.config, name=name)
    meta = dict(tuned.checkpoint_metadata)
    meta["model"] = {"name": name, "base": base, "source_checkpoint": Path(ckpt).name}
    if engine:
        meta["engine"] = dict(engine)
    prompts = golden_prompts()
    reference = answers(build_sam(ckpt, device="cpu"), prompts)
    tried = {
        "auto": (torch.float16, torch.float32),
        "float16": (torch.float16,),
        "float32": (torch.float32,),
    }
    for kind in tried[dtype]:
        save_delta_checkpoint(tuned, base, out, meta, dtype=kind)
        shipped = answers(build_sam(out, device="cpu"), prompts)
        worst_iou, worst_pred = compare(reference, shipped)
        print(f"{kind}: min mask IoU vs the checkpoint {worst_iou:.4f}, max IoU-prediction "
              f"difference {worst_pred:.2e}")  # fmt: skip
        if worst_iou >= 0.999 and worst_pred < 1e-3:
            break
    golden = ROOT / "tests" / "fixtures" / f"{name}_golden.npz"
    np.savez_compressed(
        golden,
        masks=np.stack(shipped[0]),
        ious=shipped[1],
        boxes=np.stack([b for _, b in prompts]),
    )
    return {
        "file": str(out),
        "bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "dtype": str(kind),
        "min_mask_iou_vs_checkpoint": worst_iou,
        "max_iou_pred_diff": worst_pred,
        "tensors": len(torch.load(out, weights_only=True)["state_dict"]),
        "golden": str(golden),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--name", default="sam_med_lite")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--engine", default="{}", help='JSON engine thresholds, e.g. {"min_iou": 0.3}'
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "float16", "float32"),
        default="auto",
        help="auto: float16 when lossless on the phantoms, else float32",
    )
    args = p.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        engine = json.loads(args.engine)
    except json.JSONDecodeError as err:
        print(f"error: --engine {args.engine!r} is not JSON: {err}", file=sys.stderr)
        return 2
    for k, v in ship(args.checkpoint, args.name, args.out, engine=engine, dtype=args.dtype).items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
