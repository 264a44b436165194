"""Our SAM modules must produce exactly the state-dict keys and shapes of the public checkpoints.

The specs live in ``../shared/spec/state_dict_sam_vit_{b,l,h}.tsv`` beside the repository; the
test is skipped when that directory is absent. Models are built on the meta device, so no
memory is allocated for the weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_sam_med.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"

# embed_dim, depth, num_heads, global_attn_indexes
VIT_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def read_spec(path: Path) -> dict[str, tuple[int, ...]]:
    """Parse a ``key<TAB>(d0, d1, ...)<TAB>dtype`` table into ``{key: shape}``."""
    spec = {}
    for line in path.read_text().splitlines()[1:]:
        if not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        dims = shape.strip("()").replace(" ", "").split(",")
        spec[key] = tuple(int(d) for d in dims if d)
    return spec


def build_meta_sam(embed_dim: int, depth: int, num_heads: int, global_idx: tuple) -> Sam:
    with torch.device("meta"):
        encoder = ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            out_chans=256,
            window_size=14,
            global_attn_indexes=global_idx,
        )
        prompt = PromptEncoder(256, (64, 64), (1024, 1024), mask_in_chans=16)
        transformer = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048)
        decoder = MaskDecoder(
            transformer_dim=256,
            transformer=transformer,
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        return Sam(encoder, prompt, decoder)


@pytest.mark.parametrize("name", sorted(VIT_SIZES))
def test_state_dict_matches_checkpoint_spec(name: str) -> None:
    spec_file = SPEC_DIR / f"state_dict_sam_{name}.tsv"
    if not spec_file.exists():
        pytest.skip(f"checkpoint spec not available: {spec_file}")
    spec = read_spec(spec_file)
    ours = {k: tuple(v.shape) for k, v in build_meta_sam(*VIT_SIZES[name]).state_dict().items()}
    missing = sorted(set(spec) - set(ours))
    unexpected = sorted(set(ours) - set(spec))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (ours[k], spec[k]) for k in spec if ours[k] != spec[k]}
    assert not wrong, f"shape mismatches (ours, spec): {wrong}"
