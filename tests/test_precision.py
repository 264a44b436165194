"""Fast mode (bf16 encoder) selection and backend loading (the fused encoder's kernels, with and
without oneDNN: ``test_fused_tiny_vit.py``)."""

from __future__ import annotations

import pytest
import torch

from napari_sam_med import build_sam
from napari_sam_med.backends import load_model
from napari_sam_med.device import inference_dtype
from napari_sam_med.volume.cache import model_weights_id


@pytest.mark.parametrize(
    ("text", "dtype"),
    [(None, None), ("fp32", None), ("FP32", None), ("bf16", torch.bfloat16),
     ("fast", torch.bfloat16)],
)  # fmt: skip
def test_inference_dtype(text, dtype) -> None:
    assert inference_dtype(text) is dtype


def test_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="precision='fp16'.*fp32, bf16"):
        build_sam("tiny", device="cpu", precision="fp16")


def test_fast_mode_encodes_in_bf16_and_returns_float32() -> None:
    torch.manual_seed(0)
    exact = build_sam("tiny", device="cpu")
    fast = build_sam("tiny", device="cpu", precision="bf16")
    fast.load_state_dict(exact.state_dict())
    x = torch.rand(1, 3, exact.config.img_size, exact.config.img_size)
    with torch.inference_mode():
        a, b = exact.encode_image(x), fast.encode_image(x)
    assert b.dtype == torch.float32 and exact.encoder_autocast is None
    err = ((a - b).abs().max() / a.abs().max()).item()
    assert 0 < err < 0.05  # bf16 rounding: different, but close
    # fast-mode embeddings are cached apart from exact ones
    assert model_weights_id(exact) != model_weights_id(fast)


def test_load_model_picks_the_backend(tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
    from napari_sam_med.onnx_export import export_onnx
    from napari_sam_med.onnx_runtime import OnnxSam

    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", precision="fast")
    assert model.encoder_autocast is torch.bfloat16
    out = export_onnx(build_sam("tiny", device="cpu"), tmp_path / "x", validate=False)
    assert isinstance(load_model(str(out), device="cpu"), OnnxSam)
    with pytest.raises(ValueError, match="float32"):
        load_model(str(out), precision="bf16")
