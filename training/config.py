"""Training configuration: nested dataclasses loaded from YAML, with ``key=value`` overrides.

``load_config("training/configs/X.yaml", ["optim.lr=3e-4", "train.steps=500"])`` reads the file,
applies the overrides (values parsed as YAML, so ``null``, ``[1, 2]`` and ``true`` work) and
validates every field. :func:`save_config` writes the resolved configuration into the run folder.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


@dataclass
class DataConfig:
    """Where the cases are and how 2D training samples are cut from them.

    Attributes:
        source: ``folder`` (image/label pairs matched by name), ``msd`` (a ``dataset.json``) or
            ``csv`` (columns ``image,label[,patient][,case][,modality]``).
        path: the folder, ``dataset.json`` or CSV file.
        patient_regex: regex whose group 1 (on the case name) is the patient id.
        orientation: axis codes the volumes are turned to before slicing (MONAI
            ``Orientationd``). ``LPS`` (default) cuts axial slices as the inference reads them
            from ITK/DICOM-ordered files (anterior up, the patient's right on the left), so the
            decoder trains on the images it will be asked about; ``RAS`` turns them by 180
            degrees (what ``sam_med_lite_v1`` was trained on).
        axis: slicing axis after that reorientation: ``axial``, ``coronal`` or ``sagittal``.
        spacing: optional ``[x, y, z]`` mm for MONAI ``Spacingd`` (``null`` keeps the grid).
        intensity: ``auto`` (CT window or MR percentiles from the modality) or a preset name of
            ``napari_sam_med.preprocessing.PRESETS``.
        objects: ``components`` (connected components per label value) or ``labels`` (each
            label value is one object).
        label_values: label values to train on (``null``: all non-zero values).
        min_object_area: smallest object, in pixels of the model input, that is prompted.
        fg_class_prob: probability of drawing a label value first (uniformly) and then a slice
            holding it (oversamples rare labels); otherwise any slice with foreground.
        max_slices_per_case: train on at most this many foreground slices per case and label
            (evenly spaced, away from the end caps; 0 = all). Bounds the embedding cache of
            decoder-only runs. Validation always draws from all slices.
        val_fraction / split_seed: patient-level split (written to ``split.json``).
        propagate_prob: probability that a training sample is a propagation step of the 3D
            engine (``training/propagation.py``): the box around the object on a neighbouring
            slice (``propagate_max_gap`` slices away at most; just past the object's end with
            ``propagate_past_end_prob``, where the answer is empty), its mask jittered by up to
            ``propagate_jitter`` px and grown by a margin drawn from ``propagate_margin``
            (model-input px), as the first prompt. Needs cached embeddings or no augmentation.
        split_file: a fixed split (``{"train": [case], "val": [case]}``, e.g.
            ``training/splits/dev_v1.json``) used instead of ``val_fraction``/``split_seed``;
            a relative path is taken from the working directory.
        val_slices_per_case: validation slices per case and label (evenly spaced).
        cache: ``memory`` (MONAI CacheDataset), ``disk`` (PersistentDataset) or ``none``.
        cache_dir: PersistentDataset folder (default ``<run_dir>/cache``).
        on_bad_case: ``skip`` (report by name and drop) or ``stop`` (raise before training).
        samples_per_epoch: length of one sampling epoch.
        workers: DataLoader worker processes.
        rtstruct_rois: RTSTRUCT ROI names, one label value each (``null``: the only ROI).
        label_names: ``{value: name}`` for text prompts (MSD sources read ``dataset.json``;
            these override it).
    """

    source: str = "folder"
    path: str = ""
    patient_regex: str | None = None
    orientation: str = "LPS"
    axis: str = "axial"
    spacing: list[float] | None = None
    intensity: str = "auto"
    objects: str = "components"
    label_values: list[int] | None = None
    min_object_area: int = 16
    fg_class_prob: float = 0.5
    max_slices_per_case: int = 0
    val_fraction: float = 0.2
    split_seed: int = 0
    split_file: str | None = None
    propagate_prob: float = 0.0
    propagate_max_gap: int = 1
    propagate_past_end_prob: float = 0.15
    propagate_margin: list[float] = field(default_factory=lambda: [2.0, 8.0])
    propagate_jitter: int = 3
    val_slices_per_case: int = 8
    cache: str = "memory"
    cache_dir: str | None = None
    on_bad_case: str = "skip"
    samples_per_epoch: int = 1000
    workers: int = 0
    rtstruct_rois: list[str] | None = None
    label_names: dict[int, str] | None = None


@dataclass
class AugConfig:
    """MONAI 2D augmentations (off automatically when decoder-only embeddings are cached)."""

    enabled: bool = True
    flip_prob: float = 0.5
    rotate_deg: float = 15.0
    rotate_prob: float = 0.3
    zoom: list[float] = field(default_factory=lambda: [0.9, 1.1])
    zoom_prob: float = 0.3
    shift: float = 10.0  # intensity offset, in units of the 0-255 preset output
    scale: float = 0.1
    intensity_prob: float = 0.3
    noise_std: float = 3.0
    noise_prob: float = 0.2


@dataclass
class ModelConfig:
    """Which model, which weights, and what trains.

    Attributes:
        name: registry name (``lite_medsam``, ``medsam_vit_b``, ``vit_b``, ``tiny``...) or one of
            our checkpoint files.
        checkpoint: weights for ``name`` (e.g. ``medsam_vit_b.pth``); ``null``: the default.
        trainable: ``decoder`` (encoder and prompt encoder frozen), ``decoder_prompt`` or
            ``full``.
        layer_decay: layer-wise LR decay of the image encoder in ``full`` mode (1.0 = off).
        freeze_bn: keep BatchNorm layers (TinyViT) in eval mode while fine-tuning.
        cache_embeddings: in ``decoder`` mode, compute each slice's embedding once and keep it.
        embedding_cache_dir: also keep them on disk there (float16; keep it outside the
            repository), keyed by the encoder weights, preset and data, so a resumed or
            repeated run skips the encoder.
        compile: ``torch.compile`` the encoder and decoder in place.
        text_encoder: train text prompts from label names with this text encoder
            (``minilm``, or a CLIP text-tower file); ``null``: no text.
    """

    name: str = "lite_medsam"
    checkpoint: str | None = None
    trainable: str = "decoder"
    layer_decay: float = 1.0
    freeze_bn: bool = True
    cache_embeddings: bool = True
    embedding_cache_dir: str | None = None
    compile: bool = False
    text_encoder: str | None = None


@dataclass
class SimConfig:
    """SAM's interactive training simulation (see ``training/simulate.py``)."""

    num_clicks: int = 8
    no_point_iters: int = 2
    point_prob: float = 0.5
    box_noise_frac: float = 0.1
    box_noise_max: float = 20.0
    multimask: str = "first_point"
    # "each": back-propagate every decoder pass at once (one pass's graph alive at a time,
    # same gradients; see training/passgrad.py); "once": one backward over all 11 passes.
    pass_backward: str = "each"
    # probability that a sample's first prompt is its label name's text (needs
    # model.text_encoder); the clicks follow as after a box or point.
    text_prob: float = 0.0


@dataclass
class LossConfig:
    """focal:dice = 20:1 mask loss, IoU-head MSE with weight 1."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25


@dataclass
class OptimConfig:
    """AdamW with warmup then cosine or step decay, clipping and accumulation."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    step_size: int = 1000
    step_gamma: float = 0.1
    grad_clip: float = 1.0
    accumulation: int = 1
    batch_size: int = 4


@dataclass
class RunConfig:
    """Length, logging, checkpoints, device."""

    run_dir: str = "runs/default"
    steps: int = 1000
    val_every: int = 200
    val_at_start: bool = True
    ckpt_every: int = 200
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    resume: str | None = None
    progress: bool = True
    val_clicks: list[int] = field(default_factory=lambda: [1, 3, 5])


@dataclass
class TrainConfig:
    """The whole training configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly)."""
        return asdict(self)


_CHOICES = {
    ("data", "source"): ("folder", "msd", "csv"),
    ("data", "axis"): ("axial", "coronal", "sagittal"),
    ("data", "objects"): ("components", "labels"),
    ("data", "cache"): ("memory", "disk", "none"),
    ("data", "on_bad_case"): ("skip", "stop", "error"),
    ("model", "trainable"): ("decoder", "decoder_prompt", "full"),
    ("sim", "multimask"): ("first_point", "always", "never"),
    ("sim", "pass_backward"): ("each", "once"),
    ("optim", "schedule"): ("cosine", "step", "constant"),
}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys {[f'{where}{k}' for k in unknown]}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name in known else None
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"config {where}{name} must be a mapping, got {value!r}")
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, default, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Numbers written as strings (YAML 1.1 reads ``3e-4`` as a string) -> the default's type."""
    if isinstance(default, bool) or not isinstance(value, str):
        return value
    if isinstance(default, (int, float)):
        try:
            return type(default)(float(value)) if isinstance(default, float) else int(value)
        except ValueError:
            raise ValueError(f"config {key}={value!r}; expected a number") from None
    return value


def _validate(cfg: TrainConfig) -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ValueError(f"config {section}.{key}={value!r}; expected one of {choices}")
    checks = [
        (0 <= cfg.data.val_fraction < 1, "data.val_fraction must be in [0, 1)"),
        (0 <= cfg.sim.point_prob <= 1, "sim.point_prob must be in [0, 1]"),
        (0 <= cfg.sim.text_prob <= 1, "sim.text_prob must be in [0, 1]"),
        (cfg.sim.no_point_iters in (0, 1, 2), "sim.no_point_iters must be 0, 1 or 2"),
        (cfg.optim.batch_size >= 1, "optim.batch_size must be >= 1"),
        (cfg.optim.accumulation >= 1, "optim.accumulation must be >= 1"),
        (cfg.run.steps >= 0, "run.steps must be >= 0"),
        (cfg.run.keep_last >= 1, "run.keep_last must be >= 1"),
        (0 < cfg.model.layer_decay <= 1, "model.layer_decay must be in (0, 1]"),
        (
            _is_axcodes(cfg.data.orientation),
            f"data.orientation={cfg.data.orientation!r}; expected three axis codes, one of L/R,"
            " one of A/P and one of S/I (e.g. 'LPS' or 'RAS')",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid config: {message}")


def _is_axcodes(codes: Any) -> bool:
    if not isinstance(codes, str) or len(codes) != 3:
        return False
    pairs = [set(p) for p in ("LR", "AP", "SI")]
    return all(sum(c in p for c in codes.upper()) == 1 for p in pairs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict, in place."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def normalise_flags(argv: list[str]) -> list[str]:
    """Turn ``--optim.lr 1e-3`` / ``--optim.lr=1e-3`` flags into ``optim.lr=1e-3`` overrides."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" not in arg:
            if i + 1 >= len(argv):
                raise ValueError(f"flag {arg} needs a value")
            out.append(f"{arg[2:]}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg[2:] if arg.startswith("--") else arg)
        i += 1
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides.

    Raises:
        ValueError: unreadable YAML, unknown keys or invalid values, naming them.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the training config ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping of sections")
    apply_overrides(data, list(overrides or []))
    cfg = _build(TrainConfig, data, "")
    _validate(cfg)
    return cfg


def save_config(cfg: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as ``run_dir/config.yaml`` atomically."""
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=run_dir)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    os.replace(tmp, path)
    return path
