"""Compare our full-size SAM against the reference ``segment_anything`` (dev-only).

Builds the reference model with seeded random weights (positional embeddings and LayerNorm
affine randomised too), copies its state dict into ours with strict checking, runs a 1024x1024
input and several prompts, and prints the max relative error (max |ours - ref| / max |ref|) of
every output plus timings. Run in the reference venv:

    PYTHONPATH=/work/main /work/refvenv/bin/python benchmarks/reference/compare_sam_full.py \
        --models vit_b vit_l vit_h
"""

from __future__ import annotations

import argparse
import time

import torch
from make_sam_goldens import randomise_  # same directory
from segment_anything import sam_model_registry

from napari_sam_med.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

VIT_SIZES = {  # embed_dim, depth, num_heads, global_attn_indexes
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def build_ours(name: str) -> Sam:
    embed_dim, depth, heads, global_idx = VIT_SIZES[name]
    encoder = ImageEncoderViT(
        embed_dim=embed_dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx
    )
    prompt = PromptEncoder(256, (64, 64), (1024, 1024), mask_in_chans=16)
    transformer = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048)
    return Sam(encoder, prompt, MaskDecoder(transformer_dim=256, transformer=transformer)).eval()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def timed(fn, repeats: int = 1):
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - start) / repeats


def prompt_cases(generator: torch.Generator) -> dict[str, dict]:
    coords = torch.rand((3, 4, 2), generator=generator) * 1024
    labels = torch.tensor([[1, 0, 1, 1], [1, 1, -1, -1], [0, 1, 0, -1]])
    boxes = torch.tensor(
        [[100.0, 120.0, 600.0, 700.0], [305.5, 50.0, 900.0, 400.25], [0.0, 0.0, 1023.0, 1023.0]]
    )
    masks = 3 * torch.randn((3, 1, 256, 256), generator=generator)
    return {
        "points multi": dict(
            points=(coords, labels), boxes=None, masks=None, multimask_output=True
        ),
        "points single": dict(
            points=(coords, labels), boxes=None, masks=None, multimask_output=False
        ),
        "box single": dict(points=None, boxes=boxes, masks=None, multimask_output=False),
        "points+box multi": dict(
            points=(coords, labels), boxes=boxes, masks=None, multimask_output=True
        ),
        "points+mask single": dict(
            points=(coords, labels), boxes=None, masks=masks, multimask_output=False
        ),
    }


def reference_decode(ref, embeddings, points, boxes, masks, multimask_output):
    sparse, dense = ref.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return ref.mask_decoder(
        image_embeddings=embeddings,
        image_pe=ref.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )


def compare(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    ref = sam_model_registry[name]().eval()
    randomise_(ref, generator)
    ours = build_ours(name)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")}
    ours.load_state_dict(state, strict=True)
    image = torch.randn((1, 3, 1024, 1024), generator=generator)

    with torch.inference_mode():
        ref_emb, t_ref = timed(lambda: ref.image_encoder(image))
        our_emb, t_ours = timed(lambda: ours.encode_image(image))
        print(
            f"[{name}] embeddings rel err {rel_err(our_emb, ref_emb):.2e} "
            f"| encoder time ref {t_ref:.1f}s ours {t_ours:.1f}s"
        )
        for case, kwargs in prompt_cases(generator).items():
            ref_masks, ref_iou = reference_decode(ref, ref_emb, **kwargs)
            e2e_masks, e2e_iou = ours.decode(our_emb, **kwargs)
            dec_masks, dec_iou = ours.decode(ref_emb, **kwargs)
            print(
                f"[{name}] {case:18s} end-to-end masks {rel_err(e2e_masks, ref_masks):.2e} "
                f"iou {rel_err(e2e_iou, ref_iou):.2e} | decoder only masks "
                f"{rel_err(dec_masks, ref_masks):.2e} iou {rel_err(dec_iou, ref_iou):.2e}"
            )
        time_decoder(name, ref, ours, ref_emb, generator)


def time_decoder(name, ref, ours, embeddings, generator) -> None:
    for batch in (1, 16):
        coords = torch.rand((batch, 2, 2), generator=generator) * 1024
        points = (coords, torch.ones((batch, 2), dtype=torch.long))
        kwargs = dict(points=points, boxes=None, masks=None, multimask_output=True)
        reference_decode(ref, embeddings, **kwargs)  # warm-up
        ours.decode(embeddings, **kwargs)
        _, t_ref = timed(lambda kw=kwargs: reference_decode(ref, embeddings, **kw), repeats=5)
        _, t_ours = timed(lambda kw=kwargs: ours.decode(embeddings, **kw), repeats=5)
        print(
            f"[{name}] decoder, {batch:2d} prompt(s) per call: ref "
            f"{1e3 * t_ref / batch:.1f} ms/prompt, ours {1e3 * t_ours / batch:.1f} ms/prompt"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b"], choices=sorted(VIT_SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models:
        compare(name, args.seed)


if __name__ == "__main__":
    main()
