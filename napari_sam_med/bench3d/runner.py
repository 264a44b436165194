"""Runs the 3D interactive protocol: one start and its corrective clicks, per case and model.

Each start goes through the engine as a user's prompt does: the 3D box through
:meth:`Propagator.box3d`, a 2D box or a point through :meth:`Propagator.key_slices` (no
z-range), and every click through :meth:`Propagator.correct` with the point and its label
(the call the plugin's correction job makes). After every step the 3D mask is scored (Dice
and NSD against ``label > 0``) and the step's wall time and encoder calls are recorded
(encoder time counts only for slices not yet in the shared embedding cache).

The published LiteMedSAM CVPR 2024 procedure
(:func:`~napari_sam_med.volume.baseline.baseline_box3d`) runs on the 3D box only: its record
has step 0 alone.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..export import EvalCase
from ..metrics import NSD_TOLERANCE_MM, dice, nsd
from ..volume.baseline import baseline_box3d
from ..volume.io import check_label_matches, read_volume
from ..volume.objects import ObjectSegmentation
from ..volume.propagate import Progress, PropagationSettings, Propagator
from ..volume.segment import resolve_preset
from ..volume.slices import SliceSegmenter
from .cases import modality_of
from .clicks import STARTS, box3d_of, next_click, start_prompt

if TYPE_CHECKING:
    from ..modeling.protocol import PromptModel

BASELINE_START = "box3d"


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run does.

    Attributes:
        starts: the starts to run (``box3d``, ``box2d``, ``point``).
        clicks: corrective clicks after each start.
        seed: seeds the tie-breaking of the click simulation (same for every model).
        tolerance_mm: the NSD tolerance.
        engine: the engine's propagation settings (defaults, or ``--engine`` overrides).
        preset: intensity preset for every case (None: from each case's modality).
    """

    starts: tuple[str, ...] = STARTS
    clicks: int = 5
    seed: int = 0
    tolerance_mm: float = NSD_TOLERANCE_MM
    engine: PropagationSettings = field(default_factory=PropagationSettings)
    preset: str | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.starts if s not in STARTS]
        if bad or not self.starts:
            raise ValueError(f"starts {list(self.starts)}; expected some of {', '.join(STARTS)}")
        if self.clicks < 0:
            raise ValueError(f"clicks={self.clicks}; expected >= 0")
        if not self.tolerance_mm > 0:
            raise ValueError(f"NSD tolerance {self.tolerance_mm} mm; expected > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (the run header that ``--resume`` checks)."""
        d = dataclasses.asdict(self)
        d["starts"] = list(self.starts)
        return d


@dataclass
class Subject:
    """One case loaded for the benchmark: image, ground truth ``label > 0``, geometry."""

    case: EvalCase
    image: Any  # a volume.io.Volume
    gt: np.ndarray
    modality: str
    preset: str

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in array order."""
        sx, sy, sz = self.image.spacing
        return float(sz), float(sy), float(sx)


def load_subject(case: EvalCase, preset: str | None = None) -> Subject:
    """Read a case's image and label (the label must be on the image grid and non-empty)."""
    image = read_volume(case.image)
    label = read_volume(case.label)
    check_label_matches(label, image)
    gt = label.array > 0
    if not gt.any():
        raise ValueError(f"{case.label}: label is empty (no voxel > 0)")
    modality = modality_of(case, image.array)
    return Subject(case, image, gt, modality, resolve_preset(preset, modality, image))


def click_rng(seed: int, case: str, start: str) -> np.random.Generator:
    """The click simulation's generator of one case and start (the same for every model)."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode()), STARTS.index(start)])


class _Scorer:
    """Times steps and scores the object after each (one record of one start)."""

    def __init__(self, seg: SliceSegmenter, subject: Subject, tolerance: float) -> None:
        self.seg, self.subject, self.tolerance = seg, subject, tolerance
        self.record: dict[str, list] = {
            "dice": [], "nsd": [], "seconds": [], "encoder_calls": [], "clicks": []
        }  # fmt: skip

    def step(self, job: Callable[[], Any], click: list[int] | None) -> np.ndarray:
        calls, t0 = self.seg.encoder_calls, time.perf_counter()
        mask = job()
        self.record["seconds"].append(round(time.perf_counter() - t0, 4))
        self.record["encoder_calls"].append(self.seg.encoder_calls - calls)
        self.record["clicks"].append(click)
        self.score(mask)
        return mask

    def score(self, mask: np.ndarray) -> None:
        gt = self.subject.gt
        self.record["dice"].append(dice(mask, gt))
        self.record["nsd"].append(nsd(mask, gt, self.subject.spacing_zyx, self.tolerance))

    def repeat(self) -> None:
        """A step without a click (nothing left to correct): the scores stay."""
        for key in ("dice", "nsd"):
            self.record[key].append(self.record[key][-1])
        self.record["seconds"].append(0.0)
        self.record["encoder_calls"].append(0)
        self.record["clicks"].append(None)


def simulate(
    seg: SliceSegmenter,
    subject: Subject,
    start: str,
    settings: BenchSettings,
    on_slice: Callable[[Progress], None] | None = None,
) -> dict[str, list]:
    """One start and ``settings.clicks`` corrective clicks on one case with one model.

    Returns:
        Lists with one entry per step (0 = the start): ``dice``, ``nsd``, ``seconds``,
        ``encoder_calls`` and ``clicks`` (``[z, x, y, label]``, None for the start or when
        nothing was left to correct).
    """
    gt, rng = subject.gt, click_rng(settings.seed, subject.case.name, start)
    sampling = subject.spacing_zyx[1:]
    prop = Propagator(seg, settings.engine)
    obj = ObjectSegmentation(1)
    scorer = _Scorer(seg, subject, settings.tolerance_mm)

    def finish(job: Iterable[Progress]) -> np.ndarray:
        for event in job:
            if on_slice is not None:
                on_slice(event)
        return obj.to_mask(gt.shape)

    z, prompt = start_prompt(start, gt, rng, sampling)
    if start == "box3d":
        pred = scorer.step(lambda: finish(prop.box3d(obj, prompt["box3d"])), None)
    else:
        obj.key_prompts = {z: prompt}
        pred = scorer.step(lambda: finish(prop.key_slices(obj)), None)
    for _ in range(settings.clicks):
        c = next_click(pred, gt, rng, sampling)
        if c is None:
            scorer.repeat()
            continue
        points, labels = np.array([[c.x, c.y]], np.float32), np.array([c.label])
        pred = scorer.step(
            lambda c=c, p=points, lab=labels: finish(prop.correct(obj, c.z, p, lab)), c.as_list()
        )
    return scorer.record


def simulate_baseline(
    seg: SliceSegmenter, subject: Subject, settings: BenchSettings
) -> dict[str, list]:
    """The published LiteMedSAM CVPR 2024 procedure from the label's 3D box (step 0 only)."""
    scorer = _Scorer(seg, subject, settings.tolerance_mm)
    scorer.step(lambda: baseline_box3d(seg, box3d_of(subject.gt)), None)
    return scorer.record


@dataclass
class BenchModel:
    """A model under test: its row name and the model (``baseline`` runs the published
    procedure with it instead of the engine)."""

    name: str
    model: PromptModel
    baseline: bool = False

    def starts(self, settings: BenchSettings) -> tuple[str, ...]:
        """The starts this model runs."""
        if self.baseline:
            return (BASELINE_START,) if BASELINE_START in settings.starts else ()
        return settings.starts


def run_case(
    case: EvalCase,
    models: Sequence[BenchModel],
    settings: BenchSettings,
    cache: Any,
    done: set[tuple[str, str, str]] | frozenset = frozenset(),
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_slice: Callable[[Progress], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (model, start) of one case not in ``done`` (``(model, case, start)`` keys).

    Models that share an image encoder share ``cache`` (an ``EmbeddingCache``), so only the
    first one pays for embeddings. A step that fails is recorded with its ``error`` (and the
    run goes on); an unreadable case gives one error record per (model, start).

    Returns:
        The new records (also passed to ``on_record`` one by one, as they finish).
    """
    todo = [
        (m, s) for m in models for s in m.starts(settings) if (m.name, case.name, s) not in done
    ]
    if not todo:
        return []
    out: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        out.append(rec)
        if on_record is not None:
            on_record(rec)

    try:
        subject = load_subject(case, settings.preset)
    except ValueError as err:
        for m, s in todo:
            emit(_record(m, case, None, s, {}, f"{err}"))
        return out
    segs: dict[str, SliceSegmenter] = {}
    for m, start in todo:
        seg = segs.get(m.name)
        if seg is None:
            image = subject.image
            seg = SliceSegmenter(m.model, image.array, subject.preset, cache, spacing=image.spacing)
            segs[m.name] = seg
        try:
            rec = (
                simulate_baseline(seg, subject, settings)
                if m.baseline
                else simulate(seg, subject, start, settings, on_slice)
            )
            emit(_record(m, case, subject, start, rec, None))
        except (ValueError, RuntimeError) as err:
            emit(_record(m, case, subject, start, {}, f"{type(err).__name__}: {err}"))
    return out


def _record(
    m: BenchModel, case: EvalCase, subject: Subject | None, start: str, rec: dict, error
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model": m.name,
        "case": case.name,
        "modality": subject.modality if subject is not None else case.modality,
        "start": start,
        "baseline": m.baseline,
    }
    if subject is not None:
        x0, y0, z0, x1, y1, z1 = box3d_of(subject.gt)
        meta.update(preset=subject.preset, slices_in_box=z1 - z0 + 1)
    return {**meta, **rec, "error": error}
