"""Training samples shaped like the 3D engine's propagation step.

The engine (``napari_sam_med.volume.propagate``) prompts slice ``z`` with the box around the
mask it found on the neighbouring slice ``z -/+ 1``, grown by its margin, and stops when a
slice comes back empty. A propagation sample reproduces that: a *prompt slice* ``zp`` holding
the object gives a box (around its ground truth, randomly grown, shrunk and shifted as a
predicted mask would be, then grown by a margin drawn from ``data.prop_margin``), and the
target is the object on the neighbouring slice ``z = zp +/- gap``. Near the object's ends the
target slice may lie just past it: then the right answer is an empty mask.

The box is given to the simulation as the sample's first prompt (``prompt_box``); SAM's
corrective clicks follow as usual, each pass receiving the previous logits as the mask prompt,
which is the engine's correction on a slice that already carries a propagated mask.

Coordinates: boxes are ``(x0, y0, x1, y1)`` pixels of the padded model input (``S x S``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

NO_BOX = (float("nan"),) * 4


def jitter_mask(mask: np.ndarray, rng: np.random.Generator, max_px: int) -> np.ndarray:
    """``mask`` grown or shrunk by up to ``max_px`` pixels and shifted by up to ``max_px``.

    Mimics a predicted mask on the prompt slice (too large, too small, or off by a little).
    An erosion that would empty the mask is skipped.
    """
    out = mask
    k = int(rng.integers(-max_px, max_px + 1)) if max_px > 0 else 0
    if k > 0:
        out = ndimage.binary_dilation(mask, iterations=k)
    elif k < 0:
        eroded = ndimage.binary_erosion(mask, iterations=-k)
        out = eroded if eroded.any() else mask
    if max_px > 0:
        dy, dx = (int(v) for v in rng.integers(-max_px, max_px + 1, size=2))
        out = np.roll(out, (dy, dx), axis=(0, 1))
    return out


def margin_box(
    mask: np.ndarray, margin: float, shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Tight box of a non-empty ``(H, W)`` mask grown by ``margin`` and clipped to ``shape``."""
    ys, xs = np.nonzero(mask)
    h, w = shape
    return (
        max(float(xs.min()) - margin, 0.0),
        max(float(ys.min()) - margin, 0.0),
        min(float(xs.max()) + margin, w - 1.0),
        min(float(ys.max()) + margin, h - 1.0),
    )


def pick_pair(
    targets: list[int],
    slices: list[int],
    num_slices: int,
    rng: np.random.Generator,
    max_gap: int,
    past_end_prob: float,
) -> tuple[int, int]:
    """``(prompt_slice, target_slice)`` for an object present on the sorted ``slices``.

    With probability ``past_end_prob`` the prompt slice is one of the object's end slices and
    the target is the slice just past it (an empty answer), when that lies in the volume.
    Otherwise the target is one of ``targets`` (a bounded subset of ``slices``, so that the
    embedding cache stays bounded) and the prompt slice holds the object ``gap`` (1..``max_gap``)
    slices away, up or down (the target itself when no such slice exists).
    """
    if rng.random() < past_end_prob:
        pairs = ((slices[0], -1), (slices[-1], 1))
        ends = [(s, s + d) for s, d in pairs if 0 <= s + d < num_slices]
        if ends:
            zp, z = ends[int(rng.integers(len(ends)))]
            return int(zp), int(z)
    z = targets[int(rng.integers(len(targets)))]
    gap = int(rng.integers(1, max(max_gap, 1) + 1))
    held = set(slices)
    options = [z + d for d in (-gap, gap) if z + d in held]
    options = options or [z + d for d in (-1, 1) if z + d in held] or [z]
    return int(options[int(rng.integers(len(options)))]), int(z)


def prompt_object(label2d: np.ndarray, value: int, rng: np.random.Generator) -> np.ndarray:
    """One connected component of ``value`` on the prompt slice (weighted by area)."""
    comps, n = ndimage.label(label2d == value)
    if n <= 1:
        return comps > 0
    sizes = np.asarray(ndimage.sum(comps > 0, comps, range(1, n + 1)), dtype=float)
    k = int(rng.choice(n, p=sizes / sizes.sum()))
    return comps == k + 1


def target_for(label2d: np.ndarray, value: int, prompt: np.ndarray, box: Any) -> np.ndarray:
    """The object on the target slice: components of ``value`` that overlap the prompt's
    box region (the engine follows one object; other lesions outside the box are not it)."""
    mask = label2d == value
    if not mask.any():
        return mask
    comps, n = ndimage.label(mask)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region = np.zeros_like(mask)
    region[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    region |= prompt
    keep = np.unique(comps[region & mask])
    return np.isin(comps, keep[keep > 0])
