"""Fast mode (bf16 encoder) and int8 selection, and backend loading (the fused encoder's kernels,
with and without oneDNN: ``test_fused_tiny_vit.py``)."""

from __future__ import annotations

import pytest
import torch

from napari_sam_med import build_sam
from napari_sam_med.backends import load_model
from napari_sam_med.device import inference_dtype, inference_precision
from napari_sam_med.modeling import _cpu_kernels, _int8_linear
from napari_sam_med.volume.cache import encoder_weights_id, model_weights_id
from tests.test_fused_tiny_vit import _tiny_vit


@pytest.mark.parametrize(
    ("text", "dtype"),
    [(None, None), ("fp32", None), ("FP32", None), ("bf16", torch.bfloat16),
     ("fast", torch.bfloat16)],
)  # fmt: skip
def test_inference_dtype(text, dtype) -> None:
    assert inference_dtype(text) is dtype


@pytest.mark.parametrize(
    ("text", "name"),
    [(None, "fp32"), ("float32", "fp32"), ("fast", "bf16"), ("INT8", "int8"), ("qint8", "int8")],
)  # fmt: skip
def test_inference_precision(text, name) -> None:
    assert inference_precision(text) == name
    assert inference_dtype("int8") is None  # int8 is not an autocast mode


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
    with pytest.raises(ValueError, match="float32.*for int8"):
        load_model(str(out), precision="int8")


needs_int8 = pytest.mark.skipif(
    _int8_linear.int8_engine() is None, reason="this torch build has no quantised CPU engine"
)


@needs_int8
def test_int8_linear_matches_float_products() -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen) for s in ((50, 64), (96, 64), (96,)))
    other = torch.randn(50, 96, generator=gen)
    q = _int8_linear.Int8Weight(w, b)
    assert q.shape == (96, 64)
    exact = torch.nn.functional.linear(x, w, b)
    for got, want in (
        (_cpu_kernels.linear(x, q, None), exact),
        (_cpu_kernels.linear(x, q, None, gelu=True), torch.nn.functional.gelu(exact)),
        (_cpu_kernels.linear_add(x, q, None, other.clone()), exact + other),
    ):
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert got.dtype == torch.float32 and 0 < err < 0.03  # int8 rounding: close, not equal


@needs_int8
def test_fused_encoder_int8_is_close_and_the_choice_survives_a_refold() -> None:
    enc = _tiny_vit()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        plain = enc(x)
        quantised = enc.fuse_for_inference(int8=True)(x)
        blocks = [op for op in enc._fast.ops if hasattr(op, "qkv_w")]
        assert blocks and all(isinstance(b.fc2_w, _int8_linear.Int8Weight) for b in blocks)
        err = ((quantised - plain).abs().max() / plain.abs().max()).item()
        assert 0 < err < 0.15
        enc.load_state_dict(enc.state_dict())  # drops the folded copies; rebuilt as int8
        assert torch.equal(enc(x), quantised)
        exact = enc.fuse_for_inference(int8=False)(x)
    assert ((exact - plain).abs().max() / plain.abs().max()).item() < 1e-5


@needs_int8
def test_int8_model_is_cached_apart_and_fp32_ids_do_not_change(lite_medsam) -> None:
    int8 = build_sam("lite_medsam", device="cpu", precision="int8")
    assert int8.encoder_int8 and int8.encoder_autocast is None and not lite_medsam.encoder_int8
    assert model_weights_id(int8) == model_weights_id(lite_medsam).replace(
        "lite_medsam-", "lite_medsam-int8-"
    )
    assert encoder_weights_id(int8) != encoder_weights_id(lite_medsam)
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        a, b = lite_medsam.encode_image(x), int8.encode_image(x)
    assert b.dtype == torch.float32 and 0 < ((a - b).abs().max() / a.abs().max()).item() < 0.2


def test_int8_is_refused_where_it_does_not_apply(monkeypatch) -> None:
    with pytest.raises(ValueError, match="int8.*TinyViT.*'tiny'.*'vit' encoder"):
        build_sam("tiny", device="cpu", precision="int8")
    with pytest.raises(ValueError, match="int8.*CPU inference mode.*inference=False"):
        build_sam("lite_medsam", device="cpu", precision="int8", inference=False)
    monkeypatch.setattr(_int8_linear, "int8_engine", lambda: None)
    with pytest.raises(ValueError, match="int8.*quantised CPU engine"):
        build_sam("lite_medsam", device="cpu", precision="int8")


def test_cli_accepts_precision_int8() -> None:
    import argparse

    from napari_sam_med.cli.options import add_speed_args

    parser = argparse.ArgumentParser()
    add_speed_args(parser)
    assert parser.parse_args(["--precision", "int8"]).precision == "int8"
    assert parser.parse_args(["--fast"]).precision == "bf16"
