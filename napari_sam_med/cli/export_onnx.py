"""``sam-med export-onnx``: the image encoder and prompt decoder as ONNX files.

    sam-med export-onnx --model lite_medsam -o lite_medsam_onnx/
    sam-med export-onnx --model runs/my_finetune.pt -o my_onnx/ --overwrite
    sam-med segment CT.nii.gz --box3d ... --model lite_medsam_onnx/ -o mask.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import DEFAULT_MODEL


def add_export_onnx(sub, common: argparse.ArgumentParser) -> None:
    """Add the ``export-onnx`` sub-command."""
    x = sub.add_parser(
        "export-onnx", parents=[common],
        help="write the image encoder and prompt decoder as ONNX (encoder.onnx, decoder.onnx)",
    )  # fmt: skip
    x.add_argument("--model", default=DEFAULT_MODEL, help="registry name or checkpoint file")
    x.add_argument("--checkpoint", help="weights for a registry name (e.g. official SAM files)")
    x.add_argument("-o", "--out", type=Path, required=True, help="folder to create")
    x.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    x.add_argument("--no-validate", action="store_true",
                   help="skip the onnxruntime vs PyTorch check (not recommended)")  # fmt: skip
    x.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export, validate against PyTorch, and print where the files went."""
    from ..build import build_sam
    from ..onnx_export import export_onnx, require_onnx

    require_onnx()  # fail before loading a large checkpoint
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    model = build_sam(args.model, checkpoint=args.checkpoint, device="cpu")
    out = export_onnx(model, args.out, overwrite=args.overwrite, validate=not args.no_validate)
    print(f"wrote {out}/encoder.onnx and {out}/decoder.onnx ({model.config.name})")
    if not args.no_validate:
        print("validated against PyTorch with onnxruntime (embedding, logits, IoU, masks)")
    print(f"use it with: sam-med segment ... --model {out}", file=sys.stderr)
    return 0
