"""Produce golden fixtures for tests/test_modeling.py from the reference SAM implementation.

Dev-only. Run ONCE in the reference venv (which has ``segment_anything``); our package and its
tests never import it:

    /work/refvenv/bin/python benchmarks/reference/make_sam_goldens.py

Writes ``tests/fixtures/sam_small_goldens.pt``: a reduced-size SAM (ViT with a padded window
grid and one global block, small prompt encoder and decoder) with seeded random weights (also
for the parameters SAM initialises to zero: absolute and relative positional embeddings,
LayerNorm affine), its inputs and its outputs for several prompt combinations.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

# Reduced configuration; keys mirror the constructor arguments of our modules.
CONFIG = {
    "encoder": dict(
        img_size=96,
        patch_size=16,
        in_chans=3,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=4.0,
        out_chans=64,
        qkv_bias=True,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=4,
        global_attn_indexes=(1,),
    ),
    "prompt": dict(
        embed_dim=64, image_embedding_size=(6, 6), input_image_size=(96, 96), mask_in_chans=16
    ),
    "transformer": dict(depth=2, embedding_dim=64, num_heads=4, mlp_dim=128),
    "decoder": dict(
        transformer_dim=64, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32
    ),
}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sam_small_goldens.pt"


def build_reference() -> Sam:
    """Reference SAM at the reduced CONFIG, built like ``build_sam._build_sam`` does."""
    enc = CONFIG["encoder"]
    encoder = ImageEncoderViT(**enc, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    prompt = PromptEncoder(**CONFIG["prompt"])
    decoder = MaskDecoder(
        transformer=TwoWayTransformer(**CONFIG["transformer"]), **CONFIG["decoder"]
    )
    return Sam(encoder, prompt, decoder).eval()


def randomise_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every zero/one-initialised tensor random values so each code path is exercised."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith("pixel_"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "pos_embed" in name or "rel_pos" in name:
                tensor.copy_(0.2 * noise)
            elif (
                "norm" in name
                or "neck.1" in name
                or "neck.3" in name
                or "upscaling.1" in name
                or "downscaling.1" in name
                or "downscaling.4" in name
            ):
                base = 1.0 if name.endswith("weight") else 0.0
                tensor.copy_(base + 0.1 * noise)


def make_prompts(generator: torch.Generator) -> dict[str, dict]:
    """Prompt cases (coordinates (x, y) in the 96x96 input frame)."""
    size = CONFIG["prompt"]["input_image_size"][0]
    coords = torch.rand((2, 3, 2), generator=generator) * size
    labels = torch.tensor([[1, 0, 1], [1, -1, -1]])
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.5, 5.0, 90.0, 40.25]])
    mask_hw = 4 * CONFIG["prompt"]["image_embedding_size"][0]
    masks = 3 * torch.randn((2, 1, mask_hw, mask_hw), generator=generator)
    return {
        "points_multi": dict(points=(coords, labels), boxes=None, masks=None, multimask=True),
        "points_single": dict(points=(coords, labels), boxes=None, masks=None, multimask=False),
        "box_only": dict(points=None, boxes=boxes, masks=None, multimask=False),
        "box_multi": dict(points=None, boxes=boxes, masks=None, multimask=True),
        "points_box": dict(points=(coords, labels), boxes=boxes, masks=None, multimask=True),
        "points_mask": dict(points=(coords, labels), boxes=None, masks=masks, multimask=False),
        "mask_only": dict(points=None, boxes=None, masks=masks[:1], multimask=True),
    }


def run_case(sam: Sam, embeddings: torch.Tensor, case: dict, per_item: bool) -> dict:
    """Reference outputs; ``per_item`` decodes prompt i against embedding i."""
    sparse, dense = sam.prompt_encoder(case["points"], case["boxes"], case["masks"])
    pe = sam.prompt_encoder.get_dense_pe()
    if per_item:
        outs = [
            sam.mask_decoder(
                embeddings[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], case["multimask"]
            )
            for i in range(sparse.shape[0])
        ]
        masks, iou = (torch.cat(t) for t in zip(*outs, strict=True))
    else:
        masks, iou = sam.mask_decoder(embeddings[:1], pe, sparse, dense, case["multimask"])
    return dict(sparse=sparse, dense=dense, masks=masks, iou=iou)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    sam = build_reference()
    randomise_(sam, generator)
    enc = CONFIG["encoder"]
    images = torch.randn(
        (2, enc["in_chans"], enc["img_size"], enc["img_size"]), generator=generator
    )
    prompts = make_prompts(generator)
    with torch.no_grad():
        embeddings = sam.image_encoder(images)
        cases = {name: run_case(sam, embeddings, c, per_item=False) for name, c in prompts.items()}
        cases["paired_points"] = run_case(sam, embeddings, prompts["points_multi"], per_item=True)
        dense_pe = sam.prompt_encoder.get_dense_pe()
    prompts["paired_points"] = dict(prompts["points_multi"])
    state = {k: v for k, v in sam.state_dict().items() if not k.startswith("pixel_")}
    payload = {
        "config": CONFIG,
        "torch_version": str(torch.__version__),
        "state_dict": state,
        "images": images,
        "embeddings": embeddings,
        "dense_pe": dense_pe,
        "prompts": prompts,
        "outputs": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(state)} tensors)")


if __name__ == "__main__":
    main()
