"""The widget's fast-mode and int8 checkboxes and the onnxruntime backend (ONNX export folder)."""

from __future__ import annotations

import pytest
import torch

from tests.plugin.conftest import WORKER_TIMEOUT_MS, add_point, wait_idle

pytestmark = pytest.mark.gui

Z = 22


def _reload(w, qtbot, name: str) -> None:
    w.model.view.load_btn.click()  # disabled until the loading worker ends, failed or not
    qtbot.waitUntil(lambda: w.model.view.load_btn.isEnabled(), timeout=WORKER_TIMEOUT_MS)
    wait_idle(qtbot, w)
    assert w.engine.model_info["name"] == name, w.activity.view.status.text()


def test_fast_mode_checkbox_loads_a_bf16_encoder(open_sam, qtbot):
    viewer, w = open_sam("ct_phantom")
    assert not w.model.view.fast_check.isChecked()
    assert w.engine.model.encoder_autocast is None
    w.model.view.fast_check.setChecked(True)
    w.model.view.model_combo.setCurrentText("tiny")
    w.engine.model_info["name"] = "before"  # so that the reload is visible
    _reload(w, qtbot, "tiny")
    assert w.engine.model.encoder_autocast is torch.bfloat16
    assert w.engine.model_info["precision"] == "bf16"
    add_point(w, Z, 35, 54)
    wait_idle(qtbot, w)
    assert w.session.obj().prompts[Z]["points"] == [[35.0, 54.0]]


def test_int8_checkbox_loads_an_int8_encoder_and_clears_the_fast_mode(open_sam, qtbot):
    from napari_sam_med.modeling._int8_linear import int8_engine

    if int8_engine() is None:
        pytest.skip("this torch build has no quantised CPU engine")
    viewer, w = open_sam("ct_phantom")
    view = w.model.view
    assert view.precision() == "fp32" and not view.int8_check.isChecked()
    view.fast_check.setChecked(True)
    view.int8_check.setChecked(True)  # one precision at a time
    assert not view.fast_check.isChecked() and view.precision() == "int8"
    view.model_combo.setCurrentText("lite_medsam")
    _reload(w, qtbot, "lite_medsam")
    assert w.engine.model.encoder_int8 and w.engine.model.encoder_autocast is None
    assert w.engine.model_info["precision"] == "int8"
    view.fast_check.setChecked(True)
    assert not view.int8_check.isChecked() and view.precision() == "bf16"


def test_onnx_export_folder_as_model(open_sam, qtbot, tmp_path):
    pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
    from napari_sam_med import build_sam
    from napari_sam_med.onnx_export import export_onnx
    from napari_sam_med.onnx_runtime import OnnxSam

    torch.manual_seed(0)
    folder = export_onnx(build_sam("tiny", device="cpu"), tmp_path / "tiny_onnx", validate=False)
    viewer, w = open_sam("ct_phantom")
    w.model.view.model_combo.setCurrentText("checkpoint file")
    w.model.view.checkpoint_edit.setText(str(folder))
    _reload(w, qtbot, str(folder))
    assert isinstance(w.engine.model, OnnxSam)
    add_point(w, Z, 35, 54)
    wait_idle(qtbot, w)
    assert w.session.last_preview is not None
    assert w.session.obj().seg.slices[Z].mask.shape == w.session.shape[1:]
