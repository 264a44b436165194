"""The public extension point of the 3D engine for key slices: a :data:`KeyPredictor` gives the
mask of a prompted slice before the model is asked (:func:`pinned` keeps the masks a user
accepted: the plugin and ``sam-med replay``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

from .prompt import SlicePrompt
from .slices import SlicePrediction

KeyPredictor = Callable[[int, SlicePrompt, bool], "SlicePrediction | None"]
"""``(z, prompt, correction) -> prediction``: a key slice's mask, or None to let the model
predict it (``correction``: the slice was corrected after a 3D run)."""


def pinned(pins: Mapping[int, SlicePrediction]) -> KeyPredictor:
    """A key predictor keeping ``pins`` (z -> the mask the user accepted) on their slices."""

    def predict(z: int, prompt: SlicePrompt, correction: bool) -> SlicePrediction | None:
        if z not in pins:
            return None
        pred = copy.copy(pins[z])
        pred.mask = pred.mask.copy()
        return pred

    return predict
