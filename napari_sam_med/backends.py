"""Load a model for inference from whatever the user named: the one entry point of CLI and plugin.

* a registry name or a checkpoint file -> :func:`napari_sam_med.build_sam` (PyTorch), in
  ``precision`` ``"fp32"`` (exact), ``"bf16"`` (fast mode) or ``"int8"`` (TinyViT, CPU);
* a folder written by ``sam-med export-onnx`` -> :class:`napari_sam_med.onnx_runtime.OnnxSam`
  (onnxruntime, float32; needs the optional extra ``onnx``).
"""

from __future__ import annotations

import os

import torch

from .build import build_sam
from .device import inference_precision, resolve_device
from .modeling import PromptModel
from .onnx_runtime import OnnxSam, is_onnx_export

BACKENDS = ("torch", "onnx")


def load_model(
    spec: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
) -> PromptModel:
    """A model for :class:`~napari_sam_med.predictor.SamPredictor` and the 3D engine.

    Args:
        spec: registry name, checkpoint file, or ONNX export folder.
        checkpoint: weights for a registry name (``build_sam``'s ``checkpoint``).
        device: for PyTorch models; an ONNX export runs on the CPU.
        precision: ``"fp32"``, ``"bf16"``/``"fast"`` or ``"int8"`` (PyTorch only).

    Raises:
        ValueError: a bad precision, or ``bf16``/``int8``/a non-CPU device with an ONNX export.
        CheckpointError / ImportError: as :func:`build_sam` / :class:`OnnxSam`.
    """
    if checkpoint is None and is_onnx_export(spec):
        if inference_precision(precision) != "fp32":
            raise ValueError(
                f"precision={precision!r} is for PyTorch models; the ONNX export {spec} runs "
                "in float32 (use --precision fp32, or the registry name/checkpoint for "
                f"{inference_precision(precision)})"
            )
        if resolve_device(device).type != "cpu" and str(device) != "auto":
            raise ValueError(f"the ONNX backend runs on the CPU; got device={device!r}")
        return OnnxSam(spec, threads=torch.get_num_threads())
    return build_sam(spec, checkpoint=checkpoint, device=device, precision=precision)
