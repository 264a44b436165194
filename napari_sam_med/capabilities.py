"""What a model was trained to answer, read from its checkpoint, never guessed from its name.

The 3D engine and the plugin ask :func:`model_capabilities` how to talk to a model:

* ``clicks``: corrective point prompts help. If False (LiteMedSAM and MedSAM as published,
  trained on boxes only), clicks that come with a box are turned into edits of the box.
* ``mask_prompt``: corrections may pass the slice's previous logits as the mask prompt, as the
  model saw in training (every pass after the first in ``training/``'s click simulation).
* ``propagation``: trained on the engine's own propagation step (box from the neighbouring
  slice's mask, empty answers past the object's ends).
* ``point_start``: trained to answer a single positive click without a box.

Where they come from, in order: ``checkpoint_metadata["training"]["capabilities"]`` (written
by ``training/`` since the 3D-loop simulation), or the shipped model's own metadata; older
fine-tunes of ``training/`` that only record ``click_trained``, which keep the behaviour they
had (points, no mask prompt); else the published weights' known training (:data:`PUBLISHED`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .modeling import PromptModel


@dataclass(frozen=True)
class Capabilities:
    """See the module docstring."""

    clicks: bool = True
    mask_prompt: bool = False
    propagation: bool = False
    point_start: bool = True


# How the published weights were trained (no metadata travels with them).
PUBLISHED: dict[str, Capabilities] = {
    "lite_medsam": Capabilities(clicks=False, point_start=False),
    "medsam_vit_b": Capabilities(clicks=False, point_start=False),
}


def model_capabilities(model: PromptModel) -> Capabilities:
    """The :class:`Capabilities` of a model built by ``build_sam``."""
    meta = getattr(model, "checkpoint_metadata", None) or {}
    training = meta.get("training")
    if isinstance(training, dict):
        caps = training.get("capabilities")
        if isinstance(caps, dict):
            clicks = bool(caps.get("clicks", True))
            return Capabilities(
                clicks=clicks,
                mask_prompt=clicks,
                propagation=bool(caps.get("propagation", False)),
                point_start=bool(caps.get("point_start", True)),
            )
        return Capabilities(clicks=bool(training.get("click_trained", True)))
    name = str(getattr(getattr(model, "config", None), "name", ""))
    return PUBLISHED.get(name, Capabilities())



# What the engine does for a model without calibrated rules (chosen for LiteMedSAM's IoU head).
DEFAULT_ENGINE_RULES: dict[str, Any] = {
    "min_iou": 0.5,
    "min_stability": 0.5,
    "repropagate": "box",
    "carry_clicks": False,
    "qc_min_iou": 0.75,
    "qc_min_stability": 0.85,
}
REPROPAGATE_MODES = ("box", "union", "keep", "off")


def engine_rules(model: PromptModel) -> dict[str, Any]:
    """The engine rules chosen for this model on training patients when it shipped
    (``checkpoint_metadata["engine"]``: ``min_iou`` and ``min_stability``, below which
    propagation without a z-range stops, ``repropagate``, how a correction reaches the
    slices beside it, ``carry_clicks``, whether its clicks travel on to them, and
    ``qc_min_iou``/``qc_min_stability``, below which the QC trace flags a slice), each
    falling back to :data:`DEFAULT_ENGINE_RULES` when missing or malformed."""
    meta = getattr(model, "checkpoint_metadata", None) or {}
    given: dict[str, Any] = meta["engine"] if isinstance(meta.get("engine"), dict) else {}
    out = dict(DEFAULT_ENGINE_RULES)
    for key in ("min_iou", "min_stability", "qc_min_iou", "qc_min_stability"):
        value = given.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    if given.get("repropagate") in REPROPAGATE_MODES:
        out["repropagate"] = given["repropagate"]
    if isinstance(given.get("carry_clicks"), bool):
        out["carry_clicks"] = given["carry_clicks"]
    return out


def trained_with_clicks(model: PromptModel) -> bool:
    """Whether ``model``'s checkpoint was fine-tuned with corrective clicks by ``training/``
    (its metadata says so)."""
    meta = getattr(model, "checkpoint_metadata", None) or {}
    return isinstance(meta.get("training"), dict) and model_capabilities(model).clicks


def qc_limits(model: PromptModel) -> tuple[float, float]:
    """``(min IoU, min stability)`` below which the QC trace flags a slice of ``model``."""
    rules = engine_rules(model)
    return float(rules["qc_min_iou"]), float(rules["qc_min_stability"])
