"""Export a model's image encoder and prompt-to-mask decoder to ONNX (``sam-med export-onnx``).

The export is a folder with two files, ``encoder.onnx`` and ``decoder.onnx``, that run in any
ONNX runtime (see :mod:`napari_sam_med.onnx_runtime` for ours):

* ``encoder.onnx``: ``image`` ``1x3xSxS`` float32, already normalised and padded exactly as
  ``preprocessing.prepare_image`` does (metadata ``normalization``, ``pixel_mean``,
  ``pixel_std``) -> ``image_embeddings`` ``1xCxhxw``.
* ``decoder.onnx``: ``image_embeddings`` ``1xCxhxw``, ``point_coords`` ``BxNx2`` (x, y) in
  model-input pixels, ``point_labels`` ``BxN`` float (-1 padding, 0 negative, 1 positive, 2/3
  box corners: SAM's ONNX convention, B and N dynamic), ``mask_input`` ``Bx1x4hx4w`` and
  ``has_mask_input`` ``1`` -> ``low_res_masks`` ``BxMx4hx4w`` and ``iou_predictions`` ``BxM``
  for all ``M = 1 + num_multimask_outputs`` mask tokens (token 0 is the single mask).

Both files carry the same metadata (model name, SHA-256 of the weights, input size,
preprocessing, the config) plus the SHA-256 of their own graph, which the runtime checks.
The folder is written beside its destination and renamed into place, so a failed export leaves
nothing behind; an existing destination is refused unless ``overwrite=True``.

``onnx`` is imported lazily (optional extra ``onnx``); the TorchScript-based exporter
(``dynamo=False``) is used because it needs no further packages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .modeling import Sam
from .onnx_runtime import (
    DECODER_FILE,
    ENCODER_FILE,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    graph_sha256,
    require_onnx,
    validate_export,
)
from .weights import sha256_file

logger = logging.getLogger(__name__)

OPSET = 17


class DecoderForOnnx(nn.Module):
    """Prompt encoder + mask decoder with tensor-only inputs (no optional arguments)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.pe = model.prompt_encoder
        self.decoder = model.mask_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the module docstring for shapes."""
        pe = self.pe
        labels = point_labels.round().long().clamp(-1, 3)
        sparse = pe.embed_point_tokens(point_coords + 0.5, labels)
        has = has_mask_input.reshape(1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)


class _PlainEncoder(nn.Module):
    """The image encoder's plain (traceable) modules, whatever fused path it has."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.encoder, "_fast_requested", False)
        self.encoder._fast_requested = False
        try:
            return self.encoder(image)
        finally:
            self.encoder._fast_requested = fused


def weights_sha256(model: Sam) -> str:
    """SHA-256 of the checkpoint file the model came from, else of its state dict."""
    path = getattr(model, "checkpoint_path", None)
    if path and os.path.isfile(path):
        return sha256_file(path)
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_metadata(model: Sam) -> dict[str, str]:
    """The metadata both files carry (string values, as ONNX stores them)."""
    cfg = model.config
    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "model_name": cfg.name,
        "weights_sha256": weights_sha256(model),
        "source": str(getattr(model, "checkpoint_path", None) or "random weights"),
        "img_size": str(cfg.img_size),
        "normalization": cfg.normalization,
        "pixel_mean": json.dumps(list(cfg.pixel_mean)),
        "pixel_std": json.dumps(list(cfg.pixel_std)),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        # what the model was trained to answer (capabilities.py reads it) and other metadata
        "checkpoint_metadata": json.dumps(
            getattr(model, "checkpoint_metadata", None) or {}, sort_keys=True, default=str
        ),
    }


def _export_one(module: nn.Module, args: tuple, path: Path, names: dict, meta: dict) -> None:
    onnx = require_onnx()
    with warnings.catch_warnings():
        # shape checks and the fixed input size are traced as constants, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module, args, str(path), input_names=names["inputs"], output_names=names["outputs"],
            dynamic_axes=names.get("dynamic"), opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in {**meta, "graph_sha256": graph_sha256(proto)}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(
    model: Sam, out_dir: str | os.PathLike, *, overwrite: bool = False, validate: bool = True
) -> Path:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``model`` into the folder ``out_dir``.

    Args:
        model: a model from :func:`napari_sam_med.build_sam` (fp32; any registered model or
            checkpoint).
        out_dir: the folder to create.
        overwrite: replace an existing ``out_dir``.
        validate: run both files in onnxruntime on a test input and compare with PyTorch
            (:func:`napari_sam_med.onnx_runtime.validate_export`); a mismatch removes them.

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        OSError: the parent folder cannot be written (the message names it).
        ImportError: ``onnx`` (or, to validate, ``onnxruntime``) is not installed.
    """
    require_onnx()
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OSError(f"cannot write the ONNX export into {parent}: {exc.strerror}") from None
    try:
        _write(model, tmp)
        if validate:
            report = validate_export(model, tmp)
            logger.info("ONNX export validated: %s", report)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(model: Sam, folder: Path) -> None:
    cfg = model.config
    meta = export_metadata(model)
    s, e, c = cfg.img_size, cfg.image_embedding_size, cfg.embed_dim
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image = torch.zeros(1, 3, s, s)
            _export_one(
                _PlainEncoder(model.image_encoder), (image,), folder / ENCODER_FILE,
                {"inputs": ["image"], "outputs": ["image_embeddings"]}, meta,
            )  # fmt: skip
            args = (
                torch.zeros(1, c, e, e), torch.tensor([[[10.0, 10.0], [0.0, 0.0]]]),
                torch.tensor([[1.0, -1.0]]), torch.zeros(1, 1, 4 * e, 4 * e), torch.zeros(1),
            )  # fmt: skip
            names = {
                "inputs": ["image_embeddings", "point_coords", "point_labels", "mask_input",
                           "has_mask_input"],
                "outputs": ["low_res_masks", "iou_predictions"],
                "dynamic": {"point_coords": {0: "batch", 1: "points"},
                            "point_labels": {0: "batch", 1: "points"},
                            "mask_input": {0: "batch"}, "low_res_masks": {0: "batch"},
                            "iou_predictions": {0: "batch"}},
            }  # fmt: skip
            _export_one(DecoderForOnnx(model), args, folder / DECODER_FILE, names, meta)
    finally:
        model.train(was_training)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` (an old ``out`` is removed only after)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
