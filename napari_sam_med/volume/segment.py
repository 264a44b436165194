"""GUI-free batch segmentation: one case (image + prompts) in, one label file out.

:func:`segment_volume` runs the 3D engine on a volume in memory; :func:`segment_case` adds
reading, writing (atomic, with the input's geometry), the QC report and a completion marker;
:func:`run_cases` runs many cases, reporting a failing case and going on. The CLI and the
tests call these; progress arrives through callbacks, so no display code lives here.

A case is *complete* (``--resume`` skips it) when its marker ``<output stem>.sam-med.json``
exists next to the output, records the same input-file SHA-256, prompts, model id and preset
request as the current run, and the output file's SHA-256 matches the one recorded (plus the
QC files when a QC folder is asked for). The marker is written last, after the labels.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..modeling import PromptModel
from ..preprocessing import guess_preset
from .cache import EmbeddingCache, model_weights_id
from .case_files import claim_case_outputs, marker_path, sha256_path
from .dicom_out import check_case_output, write_case_labels
from .geometry import Volume
from .io import read_volume
from .manifest import CaseSpec
from .objects import ObjectSegmentation, compose_labels
from .propagate import PropagationSettings, Propagator
from .qc import qc_paths, write_json_atomic, write_qc
from .slices import SliceSegmenter
from .text3d import add_text, segment_text
from .voxel_prompts import VoxelPrompt, object_prompts

logger = logging.getLogger(__name__)


@dataclass
class CaseProgress:
    """One propagation step of one object of a case (``total`` None when open-ended)."""

    case: str
    object_index: int
    num_objects: int
    label: int
    done: int
    total: int | None
    z: int
    message: str = ""


@dataclass
class CaseResult:
    """What happened to one case (JSON-friendly via :meth:`to_json`).

    ``status`` is ``"ok"``, ``"empty"`` (an object came out with no voxels; the file is
    written), ``"skipped"`` (complete from an earlier run) or ``"failed"`` (see ``error``).
    ``worker`` names the process that ran it (e.g. ``"rank 1/2"`` under torchrun).
    """

    index: int
    name: str
    image: str
    output: str
    status: str = "ok"
    objects: list[dict[str, Any]] = field(default_factory=list)
    voxels: int = 0
    volume_ml: float = 0.0
    seconds: float = 0.0
    preset: str = ""
    error: str = ""
    qc_png: str | None = None
    qc_json: str | None = None
    worker: str = ""

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        return asdict(self)


ProgressFn = Callable[[CaseProgress], None]


def resolve_preset(requested: str | None, modality: str | None, volume: Volume) -> str:
    """``requested`` (``--preset`` or the case's preset), else a guess from the modality
    (given, or from the DICOM header) and the voxel values."""
    if requested:
        return requested
    return guess_preset(modality or volume.metadata.get("modality"), volume.array)


def segment_volume(
    model: PromptModel,
    volume: Volume,
    prompts: list[VoxelPrompt],
    preset: str,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings | None = None,
    on_progress: ProgressFn | None = None,
    name: str = "",
) -> tuple[np.ndarray, list[ObjectSegmentation]]:
    """Segment every prompted object of a volume and compose one label map.

    Args:
        model: a model from ``build_sam``.
        volume: the image; ``volume.array`` is ``(z, y, x)``.
        prompts: one :class:`VoxelPrompt` per object (voxel indices ``(x, y, z)``); earlier
            objects keep their voxels where later ones overlap them.
        preset: intensity preset name.
        cache: embedding cache (in memory when None).
        settings: propagation settings (the engine's defaults when None).
        on_progress: called after every slice.
        name: the case name reported in progress events.

    Returns:
        ``(labels, objects)``: a ``(z, y, x)`` uint16 label map and the per-object results
        (with their QC traces).
    """
    seg = SliceSegmenter(model, volume.array, preset=preset, cache=cache, spacing=volume.spacing)
    prop = Propagator(seg, settings)
    objects = []
    for k, p in enumerate(prompts):
        obj = ObjectSegmentation(label=p.label, name=p.name)
        if p.box3d is not None:
            job = prop.box3d(obj, p.box3d, text=p.text)
        elif p.key_prompts:
            obj.key_prompts = dict(p.key_prompts)
            if p.text is not None:
                obj.key_prompts = add_text(obj.key_prompts, p.text)
            job = prop.key_slices(obj)
        elif p.text is not None:
            job = segment_text(prop, obj, p.text, p.text_range)
        else:  # the manifest's reader refuses an object without a prompt
            raise ValueError(f"object {p.label} ({p.name}) has no prompt")
        for ev in job:
            if on_progress is not None:
                on_progress(
                    CaseProgress(
                        name, k, len(prompts), p.label, ev.done, ev.total, ev.z, ev.message
                    )
                )
        if not obj.voxel_count():
            logger.warning("%s: object %d (%s) came out empty", name, p.label, p.name)
        objects.append(obj)
    return compose_labels(objects, volume.array.shape), objects


def segment_case(
    case: CaseSpec,
    model: PromptModel,
    preset: str | None = None,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings | None = None,
    qc_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_progress: ProgressFn | None = None,
    overwrite: bool = False,
    nonfinite_fill: float | None = None,
) -> CaseResult:
    """Read a case's image, segment its objects, write labels (+ QC) and the marker.

    Args:
        case: from :func:`~napari_sam_med.volume.manifest.load_manifest` (or the CLI).
        model: a model from ``build_sam``.
        preset: forces an intensity preset for every case (else case / modality guess).
        cache: embedding cache shared across cases.
        settings: propagation settings.
        qc_dir: write ``<name>_qc.png`` and ``<name>_qc.json`` there.
        resume: return a ``"skipped"`` result when the case is already complete.
        on_progress: per-slice callback.
        overwrite: replace existing outputs (else ``OutputExistsError`` before any work).
        nonfinite_fill: replace NaN/Inf voxels with this value (else they are an error).

    Raises:
        OutputExistsError, VolumeError, ManifestError, ValueError, OSError: not doable.
    """
    t0 = time.perf_counter()
    result = CaseResult(case.index, case.name, str(case.image), str(case.output))
    fingerprint = case_fingerprint(case, model, preset)
    if resume:
        done = completed_result(case, fingerprint, qc_dir)
        if done is not None:
            return done
    replace = claim_case_outputs(case, qc_dir, overwrite, resume)
    volume = read_volume(case.image, case.series_uid, case.component, nonfinite_fill=nonfinite_fill)
    check_case_output(volume, case.format, case.output, replace)
    result.preset = resolve_preset(preset or case.preset, case.modality, volume)
    prompts = [object_prompts(o, volume) for o in case.objects]
    labels, objects = segment_volume(
        model, volume, prompts, result.preset, cache, settings, on_progress, case.name
    )
    case.output.parent.mkdir(parents=True, exist_ok=True)
    write_case_labels(labels, volume, case.output, case.format, objects, model, replace)
    _fill_summary(result, labels, objects, volume)
    result.seconds = round(time.perf_counter() - t0, 3)
    if qc_dir is not None:
        png, js = write_qc(
            qc_dir, case, volume, labels, objects, result.preset, result.to_json(), replace
        )
        result.qc_png, result.qc_json = str(png), str(js)
    marker = {
        "fingerprint": fingerprint,
        "output_sha256": sha256_path(case.output),
        "result": result.to_json(),
    }
    write_json_atomic(marker_path(case.output), marker, overwrite=replace)
    return result


def _fill_summary(
    result: CaseResult, labels: np.ndarray, objects: list[ObjectSegmentation], volume: Volume
) -> None:
    """Per-object voxels and mL counted in the composed label map (no double counting)."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(o.label for o in objects) + 1)
    for obj in objects:
        row = obj.summary(volume.spacing)
        row["voxels"] = int(counts[obj.label])
        row["volume_ml"] = round(row["voxels"] * voxel_ml, 3)
        result.objects.append(row)
    result.voxels = int(sum(r["voxels"] for r in result.objects))
    result.volume_ml = round(result.voxels * voxel_ml, 3)
    result.status = "ok" if all(r["voxels"] for r in result.objects) else "empty"


def run_cases(
    cases: Iterable[CaseSpec],
    model: PromptModel,
    debug: bool = False,
    **kwargs: Any,
) -> Iterator[CaseResult]:
    """Run :func:`segment_case` on each case, yielding its result; a failing case yields a
    ``"failed"`` result with a one-line error and the run goes on (``debug`` re-raises).

    ``kwargs`` go to :func:`segment_case`.
    """
    for case in cases:
        t0 = time.perf_counter()
        try:
            yield segment_case(case, model, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop a batch
            if debug:
                raise
            logger.debug("case %s failed", case.name, exc_info=True)
            yield CaseResult(
                case.index, case.name, str(case.image), str(case.output), "failed",
                seconds=round(time.perf_counter() - t0, 3), error=error_line(exc),
            )  # fmt: skip


def error_line(exc: BaseException) -> str:
    """One line describing an error (our errors carry full context; others get their type)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ValueError | OSError) and type(exc).__module__.startswith("napari_sam_med"):
        return text
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- resume
def case_fingerprint(case: CaseSpec, model: PromptModel, preset: str | None) -> dict[str, Any]:
    """What must be equal for an earlier output to count as this run's output."""
    return {
        "image_sha256": sha256_path(case.image) if case.image.exists() else None,
        "series_uid": case.series_uid,
        "component": case.component,
        "objects": [o.to_json() for o in case.objects],
        "model": model_weights_id(model),
        "preset_request": preset or case.preset or f"auto:{case.modality or ''}",
    }


def completed_result(
    case: CaseSpec, fingerprint: dict[str, Any], qc_dir: str | os.PathLike | None = None
) -> CaseResult | None:
    """The earlier result (status ``"skipped"``) if the case is complete, else None."""
    path = marker_path(case.output)
    if fingerprint.get("image_sha256") is None or not (path.is_file() and case.output.is_file()):
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        same = marker["fingerprint"] == fingerprint
        same = same and marker["output_sha256"] == sha256_path(case.output)
        old = CaseResult(**marker["result"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.info("%s: marker %s unusable (%s); segmenting again", case.name, path, exc)
        return None
    if not same:
        logger.info("%s: inputs or output changed since %s; segmenting again", case.name, path)
        return None
    if qc_dir is not None and not all(p.is_file() for p in qc_paths(qc_dir, case.name)):
        return None
    old.status, old.seconds = "skipped", 0.0
    old.index, old.name = case.index, case.name
    return old
