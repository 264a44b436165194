"""``PromptModel`` is the one type of a model: the type checker proves that the PyTorch ``Sam``
and the ONNX runtime ``OnnxSam`` both satisfy it, and that a class lacking its parts does not.

The proof is mypy's, run here on a small file with the project's settings (``[tool.mypy]``);
``.ci/test`` also type-checks ``backends.load_model``, which returns either one as a
``PromptModel``. At runtime the protocol is free: nothing checks it with ``isinstance``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.test_structure import ROOT

api = pytest.importorskip("mypy.api", reason="mypy (the 'dev' extra) is not installed")

BOTH = """
    from napari_sam_med.modeling import PromptModel, Sam
    from napari_sam_med.onnx_runtime import OnnxSam


    def both(sam: Sam, onnx: OnnxSam) -> list[PromptModel]:
        return [sam, onnx]
"""

NOT_A_MODEL = """
    import torch

    from napari_sam_med.modeling import PromptModel


    class EncoderOnly:  # no decode, no config
        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return x


    def wrong(m: EncoderOnly) -> PromptModel:
        return m
"""


def _mypy(tmp_path: Path, source: str) -> tuple[str, int]:
    path = tmp_path / "check_protocol.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    config = str(ROOT / "pyproject.toml")
    cache = str(ROOT / ".mypy_cache")  # the one .ci/test's mypy run has just filled (torch's stubs)
    out, err, status = api.run(["--config-file", config, "--cache-dir", cache, str(path)])
    return out + err, status


def test_sam_and_onnx_sam_are_prompt_models(tmp_path: Path) -> None:
    report, status = _mypy(tmp_path, BOTH)
    assert status == 0, report


def test_a_class_without_decode_is_not_a_prompt_model(tmp_path: Path) -> None:
    report, status = _mypy(tmp_path, NOT_A_MODEL)
    assert status == 1, report
    assert 'got "EncoderOnly", expected "PromptModel"' in report
    assert "decode" in report  # mypy names the missing member
