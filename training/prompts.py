"""Prompts of the interactive simulation: first prompts, corrective clicks, prompt encoding.

Coordinates are ``(x, y)`` pixels of the padded model input (``S x S``); masks and logits are
on the low-res grid ``L x L``. A sample's first prompt is a box, a point, or (for models with a
text prompt) the text embedding of its label's name; corrective clicks follow in every case.

Samples whose prompts give the same number of sparse tokens share one decoder call (box: ``k``
clicks + 2 corners; point: the point + ``k`` clicks + 1 padding token; text: ``k`` clicks + 1
padding token + the text token when ``k > 0``, the text token alone before the first click,
exactly as at inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

BOX, POINT, TEXT = 0, 1, 2
KIND_NAMES = {"box": BOX, "point": POINT, "text": TEXT}


def uniform_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A pixel ``(x, y)`` drawn uniformly from a non-empty ``(H, W)`` boolean mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("cannot draw a point from an empty mask")
    i = int(rng.integers(ys.size))
    return int(xs[i]), int(ys[i])


def center_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel ``(x, y)`` of ``mask`` farthest from its border (SAM's evaluation click)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def error_point(
    pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | None
) -> tuple[int, int, int]:
    """A corrective click ``(x, y, label)`` from the error region of ``pred`` vs ``gt``.

    Drawn uniformly (``rng``) or at the centre of the error region (``rng=None``). A pixel in
    the false-negative region (``gt & ~pred``) is a positive click (1), one in the
    false-positive region (``pred & ~gt``) negative (0). A perfect prediction gets a positive
    click inside ``gt``.
    """
    error = pred != gt
    if not error.any():
        if not gt.any():  # an empty answer found: a negative click in the middle says so again
            return gt.shape[1] // 2, gt.shape[0] // 2, 0
        x, y = uniform_point(gt, rng) if rng is not None else center_point(gt)
        return x, y, 1
    x, y = uniform_point(error, rng) if rng is not None else center_point(error)
    return x, y, int(bool(gt[y, x]))


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box ``(x0, y0, x1, y1)`` (inclusive pixel indices) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def noisy_box(
    box: np.ndarray, rng: np.random.Generator, frac: float, max_std: float, size: int
) -> np.ndarray:
    """Add N(0, std) to each coordinate, std = ``min(frac * side, max_std)`` for its axis.

    The result is clipped to ``[0, size - 1]`` and re-ordered so that ``x0 <= x1, y0 <= y1``.
    """
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    std = np.minimum(frac * np.array([w, h, w, h], dtype=np.float64), max_std)
    out = np.clip(box + rng.normal(size=4) * std, 0, size - 1)
    x0, x1 = sorted((out[0], out[2]))
    y0, y1 = sorted((out[1], out[3]))
    return np.array([x0, y0, x1, y1], dtype=np.float32)


@dataclass
class PromptState:
    """Prompts of a batch: the first prompt and the clicks so far (input pixel coords)."""

    kind: torch.Tensor  # (B,) long: BOX, POINT or TEXT first prompt
    box: torch.Tensor  # (B, 4) x0, y0, x1, y1
    first_point: torch.Tensor  # (B, 2) x, y
    click_xy: torch.Tensor  # (B, k, 2)
    click_label: torch.Tensor  # (B, k) 1 positive, 0 negative
    text: torch.Tensor | None = None  # (B, D) label-name embeddings (used by TEXT samples)

    @property
    def first_is_box(self) -> torch.Tensor:
        """``(B,)`` bool: the first prompt is a box."""
        return self.kind == BOX

    def add_clicks(self, xy: torch.Tensor, label: torch.Tensor) -> None:
        """Append one click per sample: ``xy (B, 2)``, ``label (B,)``."""
        self.click_xy = torch.cat([self.click_xy, xy[:, None]], dim=1)
        self.click_label = torch.cat([self.click_label, label[:, None]], dim=1)


def take(t: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    """``t[idx]``, or ``t`` itself when ``idx`` is ``None`` (the whole batch, no copy)."""
    return t if (t is None or idx is None) else t[idx]


def _encode_kind(
    prompt_encoder: torch.nn.Module,
    state: PromptState,
    idx: torch.Tensor | None,
    mask_prompt: torch.Tensor | None,
    kind: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings of the samples ``idx`` (``None``: all), which share a first-prompt kind."""
    masks = take(mask_prompt, idx)
    clicks, labels = take(state.click_xy, idx), take(state.click_label, idx)
    pts = (clicks, labels) if clicks.shape[1] else None
    if kind == BOX:
        return prompt_encoder(points=pts, boxes=take(state.box, idx), masks=masks)
    if kind == TEXT:
        if state.text is None:
            raise ValueError("text first prompts need the samples' text embeddings")
        return prompt_encoder(points=pts, boxes=None, masks=masks, text=take(state.text, idx))
    first = take(state.first_point, idx)
    coords = torch.cat([first[:, None], clicks], dim=1)
    ones = torch.ones(first.shape[0], 1, dtype=labels.dtype, device=coords.device)
    return prompt_encoder(
        points=(coords, torch.cat([ones, labels], dim=1)), boxes=None, masks=masks
    )


def encode_groups(
    prompt_encoder: torch.nn.Module, state: PromptState, mask_prompt: torch.Tensor | None
) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """``[(idx, sparse (b, T, C), dense (b, C, h, w))]``: groups with a common token count ``T``.

    ``idx`` holds the group's batch indices in increasing order, or is ``None`` when the group
    is the whole batch (then nothing was gathered).
    """
    kinds = [int(k) for k in torch.unique(state.kind).tolist()]
    if len(kinds) == 1:
        return [(None, *_encode_kind(prompt_encoder, state, None, mask_prompt, kinds[0]))]
    buckets: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for kind in kinds:
        idx = torch.nonzero(state.kind == kind).flatten()
        sparse, dense = _encode_kind(prompt_encoder, state, idx, mask_prompt, kind)
        buckets.setdefault(sparse.shape[1], []).append((idx, sparse, dense))
    out = []
    for parts in buckets.values():
        idx = torch.cat([p[0] for p in parts])
        order = torch.argsort(idx)
        sparse = torch.cat([p[1] for p in parts])[order]
        dense = torch.cat([p[2] for p in parts])[order]
        whole = idx.numel() == state.kind.numel()
        out.append((None if whole else idx[order], sparse, dense))
    return out


def _to_input(xy_low: np.ndarray, factor: float) -> np.ndarray:
    """Low-res pixel index ``(x, y)`` -> centre of the covered input pixels."""
    return xy_low * factor + (factor - 1) / 2.0


def first_prompts(
    gt_full: torch.Tensor,
    rngs: list[np.random.Generator] | None,
    point_prob: float,
    box_noise_frac: float,
    box_noise_max: float,
    first: str | None = None,
    text: torch.Tensor | None = None,
    text_prob: float = 0.0,
    given_box: torch.Tensor | None = None,
) -> PromptState:
    """Draw each sample's first prompt from its ``(B, 1, S, S)`` ground truth.

    Training (``rngs`` given): with probability ``text_prob`` (only when ``text`` is given) the
    label's text, else a uniform point with probability ``point_prob``, else a noisy box.
    Evaluation (``rngs=None``): ``first="box"`` (the exact box), ``"point"`` (the centre of the
    object) or ``"text"``.

    Args:
        text: ``(B, D)`` embeddings of each sample's label name, or ``None``.
        given_box: ``(B, 4)`` boxes that are the first prompt as they are (propagation
            samples, whose ground truth may be empty); rows of NaN draw as above.
    """
    gt = gt_full[:, 0].detach().cpu().numpy() > 0.5
    size = gt.shape[-1]
    given = None if given_box is None else given_box.detach().cpu().numpy()
    kinds, boxes, points = [], [], []
    for b in range(gt.shape[0]):
        if given is not None and np.isfinite(given[b]).all():
            box = given[b].astype(np.float32)
            kinds.append(BOX)
            boxes.append(box)
            points.append(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            continue
        if not gt[b].any():
            raise ValueError(f"sample {b} of the batch has an empty ground-truth mask")
        if rngs is None:
            if first not in KIND_NAMES:
                raise ValueError(f"first prompt {first!r}; expected one of {sorted(KIND_NAMES)}")
            kind = KIND_NAMES[first]
            point = center_point(gt[b])
            box = mask_box(gt[b])
        else:
            use_text = text is not None and text_prob > 0 and rngs[b].random() < text_prob
            kind = POINT if rngs[b].random() < point_prob else BOX
            kind = TEXT if use_text else kind
            point = uniform_point(gt[b], rngs[b])
            box = noisy_box(mask_box(gt[b]), rngs[b], box_noise_frac, box_noise_max, size)
        kinds.append(kind)
        boxes.append(box)
        points.append(point)
    if TEXT in kinds and text is None:
        raise ValueError("a text first prompt needs the samples' text embeddings (text=None)")
    dev = gt_full.device
    return PromptState(
        kind=torch.tensor(kinds, dtype=torch.long, device=dev),
        box=torch.tensor(np.stack(boxes), dtype=torch.float32, device=dev),
        first_point=torch.tensor(np.array(points), dtype=torch.float32, device=dev),
        click_xy=torch.zeros(len(kinds), 0, 2, device=dev),
        click_label=torch.zeros(len(kinds), 0, dtype=torch.long, device=dev),
        text=None if text is None else text.to(dev, torch.float32),
    )


def corrective_clicks(
    logits: torch.Tensor,
    gt_low: torch.Tensor,
    rngs: list[np.random.Generator] | None,
    factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample from the error region of ``logits > 0`` vs ``gt_low``.

    Returns:
        ``xy (B, 2)`` in input pixels and ``label (B,)`` (1 positive, 0 negative).
    """
    pred = (logits[:, 0] > 0).detach().cpu().numpy()
    gt = gt_low[:, 0].cpu().numpy()
    xy, labels = [], []
    for b in range(pred.shape[0]):
        x, y, lab = error_point(pred[b], gt[b], None if rngs is None else rngs[b])
        xy.append(_to_input(np.array([x, y], dtype=np.float32), factor))
        labels.append(lab)
    dev = logits.device
    return (
        torch.tensor(np.stack(xy), dtype=torch.float32, device=dev),
        torch.tensor(labels, dtype=torch.long, device=dev),
    )
