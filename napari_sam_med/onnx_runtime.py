"""An onnxruntime backend: a folder from ``sam-med export-onnx`` used like a model.

:class:`OnnxSam` has the parts of :class:`~napari_sam_med.modeling.Sam` that
:class:`~napari_sam_med.predictor.SamPredictor` and the 3D engine use (``config``,
``encode_image``, ``decode``, ``checkpoint_path``), so ``SamPredictor(OnnxSam(folder))`` runs
without PyTorch modules. Text prompts are not supported by this backend.

When loaded, both files must carry this package's ONNX metadata, agree with each other (model,
weights SHA-256, config), have an unchanged graph (SHA-256 recorded at export), and the input
shapes the metadata claims; a caller that knows which weights it expects passes
``expected_weights_sha256``. Anything else is refused with a ValueError naming the file.

``onnxruntime`` is imported lazily (optional extra ``onnx``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import SamConfig

if TYPE_CHECKING:
    from .modeling import Sam

ONNX_FORMAT = "napari-sam-med-onnx"
ONNX_FORMAT_VERSION = "1"
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
INSTALL_HINT = "pip install 'napari-sam-med[onnx]'   (onnx and onnxruntime)"

_SHARED_KEYS = ("model_name", "weights_sha256", "img_size", "normalization", "config")


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``encoder.onnx`` and ``decoder.onnx``."""
    p = Path(path)
    return p.is_dir() and (p / ENCODER_FILE).is_file() and (p / DECODER_FILE).is_file()


def require_onnx() -> Any:
    """Import ``onnx`` or raise ImportError with the install hint."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export and loading need 'onnx': {INSTALL_HINT}") from exc
    return onnx


def graph_sha256(proto: Any) -> str:
    """SHA-256 of an ONNX model's serialised bytes with its metadata removed."""
    onnx = require_onnx()
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def _require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"the ONNX backend needs 'onnxruntime': {INSTALL_HINT}") from exc
    return onnxruntime


def read_checked_metadata(path: Path) -> dict[str, str]:
    """Metadata of one exported file after checking format and graph checksum."""
    onnx = require_onnx()
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
        raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path} was not written by sam-med export-onnx (no '{ONNX_FORMAT}')")
    if meta.get("format_version") != ONNX_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {meta.get('format_version')!r}; expected "
            f"{ONNX_FORMAT_VERSION}"
        )
    if graph_sha256(proto) != meta.get("graph_sha256"):
        raise ValueError(
            f"{path} does not match the model its metadata claims: its graph's SHA-256 differs "
            "from the one recorded at export (the file was modified or swapped); re-export it"
        )
    return meta


class OnnxSam:
    """An exported model run by onnxruntime (CPU).

    Args:
        folder: a folder written by :func:`napari_sam_med.onnx_export.export_onnx`.
        threads: intra-op threads (``None``: onnxruntime's default).
        expected_weights_sha256: refuse the export unless it was made from these weights.

    Raises:
        ValueError: missing files, foreign or modified files, or a mismatch (see module doc).
        ImportError: ``onnx`` / ``onnxruntime`` missing (with the install hint).
    """

    encoder_autocast = None

    def __init__(
        self,
        folder: str | os.PathLike,
        threads: int | None = None,
        expected_weights_sha256: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not is_onnx_export(self.folder):
            raise ValueError(
                f"{self.folder} is not an ONNX export: expected a folder with {ENCODER_FILE} "
                f"and {DECODER_FILE} (sam-med export-onnx)"
            )
        enc_meta = read_checked_metadata(self.folder / ENCODER_FILE)
        dec_meta = read_checked_metadata(self.folder / DECODER_FILE)
        for key in _SHARED_KEYS:
            if enc_meta.get(key) != dec_meta.get(key):
                raise ValueError(
                    f"{self.folder}: {ENCODER_FILE} and {DECODER_FILE} come from different "
                    f"models ({key}: {enc_meta.get(key)!r} vs {dec_meta.get(key)!r})"
                )
        if expected_weights_sha256 and enc_meta["weights_sha256"] != expected_weights_sha256:
            raise ValueError(
                f"{self.folder} was exported from weights {enc_meta['weights_sha256'][:16]}..., "
                f"not the expected {expected_weights_sha256[:16]}..."
            )
        self.metadata = enc_meta
        self.config = SamConfig.from_dict(json.loads(enc_meta["config"]))
        self.checkpoint_path = str(self.folder / ENCODER_FILE)
        self.checkpoint_metadata: dict[str, Any] = json.loads(
            enc_meta.get("checkpoint_metadata") or "{}"
        )
        ort = _require_ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        cpu = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.folder / ENCODER_FILE), opts, providers=cpu)
        self.decoder = ort.InferenceSession(str(self.folder / DECODER_FILE), opts, providers=cpu)
        self._check_shapes()

    def _check_shapes(self) -> None:
        s = self.config.img_size
        shape = self.encoder.get_inputs()[0].shape
        if list(shape) != [1, 3, s, s]:
            raise ValueError(
                f"{self.folder / ENCODER_FILE} takes input {shape}, but its metadata claims "
                f"img_size {s} (1x3x{s}x{s}); the file does not match its metadata"
            )

    # ---------------------------------------------------------------- model-like API
    def parameters(self) -> Iterator[torch.Tensor]:
        """One CPU tensor, so ``next(model.parameters()).device`` is the CPU."""
        yield torch.zeros(())

    def encode_image(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``1x3xSxS`` normalised image -> ``1xCxhxw`` float32 embedding (torch, CPU)."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return torch.from_numpy(self.encode(arr))

    def encode(self, image: np.ndarray) -> np.ndarray:
        """numpy ``1x3xSxS`` float32 -> ``1xCxhxw`` float32."""
        return self.encoder.run(None, {"image": np.ascontiguousarray(image, np.float32)})[0]

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as :meth:`napari_sam_med.modeling.Sam.decode` (input-pixel prompts)."""
        coords, labels = _prompt_points(points, boxes, masks)
        e = self.config.image_embedding_size
        has = masks is not None
        mask = np.zeros((1, 1, 4 * e, 4 * e), np.float32)
        if masks is not None:
            mask = masks.float().cpu().numpy()
        low, iou = self.decoder.run(None, {
            "image_embeddings": image_embeddings.float().cpu().numpy(),
            "point_coords": coords, "point_labels": labels, "mask_input": mask,
            "has_mask_input": np.array([1.0 if has else 0.0], np.float32),
        })  # fmt: skip
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return torch.from_numpy(low[:, sel]), torch.from_numpy(iou[:, sel])


def _prompt_points(points, boxes, masks) -> tuple[np.ndarray, np.ndarray]:
    """Points (+ a padding point when there is no box) and box corners, as the model embeds."""
    parts_c, parts_l = [], []
    bs = masks.shape[0] if masks is not None else 1
    if points is not None:
        bs = points[0].shape[0]
    elif boxes is not None:
        bs = boxes.shape[0]
    if points is not None:
        parts_c.append(points[0].float().cpu().numpy())
        parts_l.append(points[1].float().cpu().numpy())
    if boxes is None:
        parts_c.append(np.zeros((bs, 1, 2), np.float32))
        parts_l.append(np.full((bs, 1), -1.0, np.float32))
    else:
        parts_c.append(boxes.float().cpu().numpy().reshape(-1, 2, 2))
        parts_l.append(np.tile(np.array([[2.0, 3.0]], np.float32), (bs, 1)))
    coords = np.concatenate(parts_c, axis=1).astype(np.float32)
    return coords, np.concatenate(parts_l, axis=1).astype(np.float32)


def validate_export(
    model: Sam,
    folder: str | os.PathLike,
    image: np.ndarray | None = None,
    rtol: float = 1e-3,
    min_mask_iou: float = 0.99,
) -> dict[str, float]:
    """Compare an export with the PyTorch model it came from; raise ValueError on a mismatch.

    Embeds ``image`` (an ``(H, W)`` slice in ``[0, 255]``; default: a synthetic CT-like slice)
    with both, then decodes a box, two points, and a box with the previous logits as mask
    prompt (single and multimask). Checked: embedding and logits within ``rtol`` (max relative
    difference), IoU predictions within ``rtol`` (absolute), and the thresholded masks of the
    fully ONNX path against the fully PyTorch path with IoU >= ``min_mask_iou``.

    Returns:
        The worst differences measured (``embedding``, ``logits``, ``iou_pred``, ``mask_iou``).
    """
    from .preprocessing import prepare_image

    ort = OnnxSam(folder)
    img = _test_slice(model.config.img_size) if image is None else image
    x, _ = prepare_image(img, model.config, "cpu")
    with torch.inference_mode():
        e_pt = model.image_encoder(x).float()
        e_ox = ort.encode_image(x)
        worst = {"embedding": _rel(e_ox, e_pt), "logits": 0.0, "iou_pred": 0.0, "mask_iou": 1.0}
        for kwargs in _test_prompts(model.config):
            for multi in (False, True):
                low, iou = model.decode(e_pt, multimask_output=multi, **kwargs)
                low_o, iou_o = ort.decode(e_pt, multimask_output=multi, **kwargs)
                worst["logits"] = max(worst["logits"], _rel(low_o, low))
                worst["iou_pred"] = max(worst["iou_pred"], (iou_o - iou).abs().max().item())
                end_to_end = ort.decode(e_ox, multimask_output=multi, **kwargs)[0]
                worst["mask_iou"] = min(worst["mask_iou"], _mask_iou(end_to_end > 0, low > 0))
    bad = [k for k in ("embedding", "logits", "iou_pred") if worst[k] > rtol]
    if bad or worst["mask_iou"] < min_mask_iou:
        raise ValueError(
            f"the ONNX export in {folder} does not reproduce the PyTorch model: {worst} "
            f"(allowed: relative {rtol}, mask IoU >= {min_mask_iou})"
        )
    return worst


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def _test_slice(size: int) -> np.ndarray:
    """A deterministic CT-like ``size x size`` slice: body, two organs, a lesion, noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 60.0 * ((((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2) < 1)
    img += 70.0 * ((((yy - 0.45) / 0.15) ** 2 + ((xx - 0.35) / 0.12) ** 2) < 1)
    img += 40.0 * ((((yy - 0.6) / 0.1) ** 2 + ((xx - 0.65) / 0.14) ** 2) < 1)
    img += 80.0 * ((((yy - 0.42) / 0.05) ** 2 + ((xx - 0.37) / 0.05) ** 2) < 1)
    img += np.random.default_rng(0).normal(0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.float32)


def _test_prompts(config: SamConfig) -> list[dict[str, Any]]:
    """A box on the synthetic lesion, two points, and the box with a mask prompt."""
    s = float(config.img_size)
    box = torch.tensor([[0.30 * s, 0.35 * s, 0.44 * s, 0.49 * s]])
    points = (torch.tensor([[[0.37 * s, 0.42 * s], [0.6 * s, 0.8 * s]]]), torch.tensor([[1, 0]]))
    m = 4 * config.image_embedding_size
    mask = torch.full((1, 1, m, m), -5.0)
    mask[..., int(0.35 * m) : int(0.49 * m), int(0.30 * m) : int(0.44 * m)] = 5.0
    return [{"boxes": box}, {"points": points}, {"boxes": box, "masks": mask}]
