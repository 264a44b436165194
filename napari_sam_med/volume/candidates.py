"""The live candidate policy: which masks a prompt on one slice offers, and which is shown.

The plugin's preview and ``sam-med replay`` both go through :func:`candidate_steps`, so that a
replayed prompt gets exactly the candidates the user chose from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .prompt import SlicePrompt, coerce
from .slices import SlicePrediction, SliceSegmenter, choose_candidate

Candidates = tuple[list[SlicePrediction], list[str], int]


def candidate_steps(
    segmenter: SliceSegmenter, z: int, prompt: SlicePrompt | dict[str, Any]
) -> Iterator[Candidates]:
    """The ambiguity candidates of one prompt: yields ``(predictions, names, chosen)``.

    A single point (or text alone) keeps SAM's advice (the candidate of highest predicted
    IoU, one decoder pass): one yield. A box or several points yield the single-mask
    output (``"auto"``) at once, then the three ambiguity masks followed by ``"auto"``,
    which stays chosen. The prompt is clipped to the slice first (a click on the image's
    border never fails for a fraction of a pixel).
    ``segmenter`` is a ``SliceSegmenter`` (or anything with its ``predict``/``slice_shape``).
    """
    prompt = coerce(prompt, f"slice {z}: the prompt").clipped(segmenter.slice_shape)
    if prompt.is_empty:
        raise ValueError(f"slice {z}: the prompt has no points, no box and no text")
    single = None
    if prompt.box is not None or len(prompt.points) > 1:
        single = segmenter.predict(z, prompt, multimask=False, source="prompt")
        yield [single], ["auto"], 0
    multi = segmenter.predict(z, prompt, multimask=True, source="prompt")
    if multi.candidates is None:  # a SliceSegmenter's multimask prediction always has them
        raise ValueError(f"slice {z}: the multimask prediction came back without its candidates")
    ious = multi.candidates.ious
    preds = [choose_candidate(multi, i) for i in range(len(ious))]
    names = [str(i + 1) for i in range(len(preds))]
    if single is None:
        yield preds, names, int(np.argmax(ious))
    else:
        yield [*preds, single], [*names, "auto"], len(preds)
