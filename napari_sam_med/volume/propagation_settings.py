"""Knobs and progress events of the 3D engine (:mod:`.propagate`): :class:`PropagationSettings`
says when propagation stops and how clicks reach the model; :class:`Progress` is what every
3D job yields after each slice."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """One step of a running job: ``done`` of ``total`` slices (total may be unknown)."""

    done: int
    total: int | None
    z: int
    message: str = ""


@dataclass
class PropagationSettings:
    """Knobs of the propagation (defaults tuned on the dev set; see benchmarks/).

    Attributes:
        box_margin: pixels (on the model-input grid) added around the previous mask's box.
        use_mask_prompt: feed the previous slice's low-res logits as the mask prompt while
            propagating.
        correction_mask_prompt: a correction passes the slice's own previous logits as the
            mask prompt: ``None`` follows the model's capabilities (models trained with the
            click simulation of ``training/`` saw exactly that), or force it on/off.
        min_area: a mask with fewer pixels counts as empty.
        min_iou / min_stability: stop below these (modes without a z-range); ``None``: the
            values calibrated for the model (its checkpoint's ``engine`` metadata, see
            :func:`napari_sam_med.capabilities.engine_rules`), else 0.5 and 0.5.
        max_area_growth: stop when the area grows by more than this factor in one slice.
        max_centroid_shift: stop when the centroid moves more than this fraction of the
            previous mask's equivalent diameter.
        max_intensity_jump / min_intensity_spread: stop when the median intensity (0-255
            after the preset) under the mask moves by more than ``max_intensity_jump`` times
            the previous slice's spread (at least ``min_intensity_spread``): the mask has left
            the tumour for another tissue.
        click_mode: how clicks that come with a box reach the model: ``"points"`` as point
            prompts; ``"box"`` as edits of the box (a positive click outside grows it to take
            the click in, a negative click inside moves the nearest edge past it); ``"auto"``
            follows the model's recorded capabilities
            (:func:`napari_sam_med.capabilities.model_capabilities`): box edits for weights
            trained on boxes only (LiteMedSAM as published, whose point answers are weak),
            points otherwise.
        change_tol: a correction stops re-propagating where Dice(new, old) >= this.
        repropagate: how a correction reaches the slices beside it: ``"box"`` each from the
            box around its neighbour's new mask; ``"union"`` that box widened by the slice's
            own earlier box; ``"keep"`` as union, with the slice's earlier logits as the mask
            prompt; ``"off"`` not at all (the click changes its own slice only); ``"auto"``:
            the model's calibrated rule (:func:`napari_sam_med.capabilities.engine_rules`),
            else ``box``.
        carry_clicks: a correction's clicks travel on to the slices beside it while their
            earlier masks are wrong at the same pixel in the same way (:mod:`.carried_clicks`);
            ``None``: the model's calibrated rule
            (:func:`napari_sam_med.capabilities.engine_rules`), else off.
        anisotropy_margin: the box margin is at least this times the ratio of the slice
            gap to the in-plane pixel size (needs the segmenter's ``spacing``).
    """

    box_margin: float = 3.0
    use_mask_prompt: bool = False
    correction_mask_prompt: bool | None = None
    min_area: int = 4
    min_iou: float | None = None
    min_stability: float | None = None
    max_area_growth: float = 2.5
    max_centroid_shift: float = 0.6
    max_intensity_jump: float = 1.2
    min_intensity_spread: float = 6.0
    change_tol: float = 0.97
    repropagate: str = "auto"
    carry_clicks: bool | None = None
    click_mode: str = "auto"
    anisotropy_margin: float = 0.7
