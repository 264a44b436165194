"""SAM's interactive training simulation: 11 decoder passes on one image embedding.

The recipe (Kirillov et al. 2023, appendix A "Training algorithm"):

1. First prompt: with probability ``point_prob`` (1/2) a point drawn uniformly from the ground
   truth; otherwise the ground-truth box with Gaussian noise on each coordinate, std = 10% of the
   box side (per axis), at most ``box_noise_max`` pixels.
2. Then ``num_clicks`` (8) points, each drawn uniformly from the error region between the
   previous prediction and the ground truth: a false-negative pixel gives a positive point
   (label 1), a false-positive pixel a negative one (label 0).
3. Every iteration after the first also receives the previous iteration's **unthresholded**
   low-res logits as the mask prompt (detached). With multimask output the mask passed on, and
   used to sample the next point, is the one with the highest predicted IoU.
4. Two iterations add no new point: one at a random position among the clicks, one at the end.
   1 + 8 + 2 = 11 decoder passes, all reusing the single image embedding.

Coordinates: prompts are ``(x, y)`` pixels of the padded model input (``S x S``); masks and
logits are on the low-res grid ``L x L`` (``L = 4 * embedding size``, 256 for every public
model). Error points are drawn on the low-res grid and mapped to the centre of the input pixels
they cover. Randomness: the schedule comes from ``(seed, step)`` and everything per sample
from ``(seed, step, uid)``, so results do not depend on the batch split across DDP ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .passgrad import PassGradients

FIRST, CLICK, NO_POINT = "first", "click", "none"


def make_schedule(num_clicks: int, no_point_iters: int, rng: np.random.Generator) -> list[str]:
    """The per-iteration plan: ``first``, then clicks with ``none`` iterations inserted.

    With ``no_point_iters=2`` one ``none`` goes to a random position among the clicks
    (before click ``k``, ``k`` uniform in ``1..num_clicks``) and one at the very end.
    """
    plan = [CLICK] * num_clicks
    if no_point_iters >= 2:
        plan.insert(int(rng.integers(0, max(num_clicks, 1))), NO_POINT)
    if no_point_iters >= 1:
        plan.append(NO_POINT)
    return [FIRST, *plan]


def sample_rngs(seed: int, step: int, uids: torch.Tensor | list[int]) -> list[np.random.Generator]:
    """One generator per sample, keyed by ``(seed, step, uid)``."""
    return [np.random.default_rng([int(seed), int(step), int(u)]) for u in list(uids)]


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


def low_res_masks(gt: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 1, S, S)`` ground truth -> ``(B, 1, L, L)`` boolean on the logits grid."""
    if gt.shape[-1] == size:
        return gt > 0.5
    area = F.interpolate(gt.float(), size=(size, size), mode="area")
    low = area >= 0.5
    empty = ~low.flatten(1).any(1)
    if bool(empty.any()):  # tiny objects: any coverage counts
        low[empty] = area[empty] > 0
    return low


@dataclass
class PromptState:
    """Prompts of a batch: the first prompt and the clicks so far (input pixel coords)."""

    first_is_box: torch.Tensor  # (B,) bool
    box: torch.Tensor  # (B, 4) x0, y0, x1, y1
    first_point: torch.Tensor  # (B, 2) x, y
    click_xy: torch.Tensor  # (B, k, 2)
    click_label: torch.Tensor  # (B, k) 1 positive, 0 negative

    def add_clicks(self, xy: torch.Tensor, label: torch.Tensor) -> None:
        """Append one click per sample: ``xy (B, 2)``, ``label (B,)``."""
        self.click_xy = torch.cat([self.click_xy, xy[:, None]], dim=1)
        self.click_label = torch.cat([self.click_label, label[:, None]], dim=1)


def _take(t: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    """``t[idx]``, or ``t`` itself when ``idx`` is ``None`` (the whole batch, no copy)."""
    return t if (t is None or idx is None) else t[idx]


def _encode_group(
    prompt_encoder: torch.nn.Module,
    state: PromptState,
    idx: torch.Tensor | None,
    mask_prompt: torch.Tensor | None,
    is_box: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings of the samples ``idx`` (``None``: all), which share a first-prompt type."""
    masks = _take(mask_prompt, idx)
    clicks, labels = _take(state.click_xy, idx), _take(state.click_label, idx)
    if is_box:
        pts = (clicks, labels) if clicks.shape[1] else None
        return prompt_encoder(points=pts, boxes=_take(state.box, idx), masks=masks)
    first = _take(state.first_point, idx)
    coords = torch.cat([first[:, None], clicks], dim=1)
    ones = torch.ones(first.shape[0], 1, dtype=labels.dtype, device=coords.device)
    return prompt_encoder(
        points=(coords, torch.cat([ones, labels], dim=1)), boxes=None, masks=masks
    )


def encode_prompts(
    prompt_encoder: torch.nn.Module, state: PromptState, mask_prompt: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse ``(B, k+2, C)`` and dense ``(B, C, h, w)`` embeddings of a mixed batch.

    Box-first samples give ``k`` clicks + 2 box corners, point-first samples the first point +
    ``k`` clicks + 1 padding token: the same count, as SAM's own prompt encoder produces.
    """
    groups = _groups(state.first_is_box)
    if len(groups) == 1:
        return _encode_group(prompt_encoder, state, None, mask_prompt, groups[0][0])
    parts = [_encode_group(prompt_encoder, state, idx, mask_prompt, flag) for flag, idx in groups]
    inverse = torch.argsort(torch.cat([idx for _, idx in groups]))
    return (
        torch.cat([sp for sp, _ in parts])[inverse],
        torch.cat([de for _, de in parts])[inverse],
    )


def _groups(flags: torch.Tensor) -> list[tuple[bool, torch.Tensor]]:
    """``[(flag, indices)]`` for the values ``True``/``False`` present in ``(B,)`` ``flags``."""
    out = []
    for flag in (True, False):
        idx = torch.nonzero(flags == flag).flatten()
        if idx.numel():
            out.append((flag, idx))
    return out


# loss_fn(logits (b, M, L, L), iou_pred (b, M), gt (b, 1, L, L)) -> per-sample loss (b,)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decode_step(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    multimask: torch.Tensor,
    gt_low: torch.Tensor,
    loss_fn: LossFn | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One decoder pass per multimask group.

    Returns:
        ``(selected_logits (B, 1, L, L), per-sample loss (B,) or None)``; with multimask the
        selected mask is the one with the highest predicted IoU.
    """
    pe = model.prompt_encoder.get_dense_pe()
    groups = _groups(multimask)
    chosen, losses = [], []
    for flag, idx in groups:
        whole = len(groups) == 1  # the whole batch: no gather copies
        logits, iou = model.mask_decoder(
            image_embeddings=embeddings if whole else embeddings[idx],
            image_pe=pe,
            sparse_prompt_embeddings=sparse if whole else sparse[idx],
            dense_prompt_embeddings=dense if whole else dense[idx],
            multimask_output=flag,
        )
        best = iou.argmax(dim=1)
        chosen.append(logits[torch.arange(logits.shape[0], device=logits.device), best][:, None])
        if loss_fn is not None:
            losses.append(loss_fn(logits, iou, gt_low if whole else gt_low[idx]))
    if len(groups) == 1:
        return chosen[0], (losses[0] if losses else None)
    inverse = torch.argsort(torch.cat([idx for _, idx in groups]))
    selected = torch.cat(chosen)[inverse]
    return selected, (torch.cat(losses)[inverse] if losses else None)


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
) -> PromptState:
    """Draw each sample's first prompt from its ``(B, 1, S, S)`` ground truth.

    Training (``rngs`` given): a uniform point with probability ``point_prob``, else a noisy
    box. Evaluation (``rngs=None``): ``first="box"`` (the exact box) or ``"point"`` (the centre
    of the object).
    """
    gt = gt_full[:, 0].detach().cpu().numpy() > 0.5
    size = gt.shape[-1]
    is_box, boxes, points = [], [], []
    for b in range(gt.shape[0]):
        if not gt[b].any():
            raise ValueError(f"sample {b} of the batch has an empty ground-truth mask")
        if rngs is None:
            use_box = first == "box"
            point = center_point(gt[b])
            box = mask_box(gt[b])
        else:
            use_box = bool(rngs[b].random() >= point_prob)
            point = uniform_point(gt[b], rngs[b])
            box = noisy_box(mask_box(gt[b]), rngs[b], box_noise_frac, box_noise_max, size)
        is_box.append(use_box)
        boxes.append(box)
        points.append(point)
    dev = gt_full.device
    return PromptState(
        first_is_box=torch.tensor(is_box, device=dev),
        box=torch.tensor(np.stack(boxes), dtype=torch.float32, device=dev),
        first_point=torch.tensor(np.array(points), dtype=torch.float32, device=dev),
        click_xy=torch.zeros(len(is_box), 0, 2, device=dev),
        click_label=torch.zeros(len(is_box), 0, dtype=torch.long, device=dev),
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


def _multimask_flags(policy: str, iteration: int, state: PromptState) -> torch.Tensor:
    if policy == "always":
        return torch.ones_like(state.first_is_box)
    if policy == "never" or iteration > 0:
        return torch.zeros_like(state.first_is_box)
    return ~state.first_is_box  # "first_point": ambiguous single point only


def simulate_train(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    gt_full: torch.Tensor,
    loss_fn: LossFn,
    sim: object,
    seed: int,
    step: int,
    uids: torch.Tensor | list[int],
    grads: PassGradients | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the full interactive recipe on one batch and return the mean loss.

    Args:
        model: a :class:`~napari_sam_med.modeling.Sam` (or a module exposing
            ``prompt_encoder`` and ``mask_decoder``).
        embeddings: ``(B, C, h, w)`` image embeddings, computed once for the whole step.
        gt_full: ``(B, 1, S, S)`` float ground truth on the padded model input.
        loss_fn: per-sample loss (see :data:`LossFn`).
        sim: a ``SimConfig`` (num_clicks, no_point_iters, point_prob, box_noise_*, multimask).
        seed / step / uids: randomness keys (schedule per step, the rest per sample).
        grads: back-propagate each pass at once (see :mod:`training.passgrad`); the returned
            loss then carries the summed gradients through a zero-valued surrogate term, so
            ``loss.backward()`` gives the same gradients with one pass's graph alive at a time.

    Returns:
        ``(loss, stats)``: the loss averaged over samples and iterations (a scalar with grad),
        and per-iteration mean losses ``{"loss_it0": ..., ...}`` plus ``"passes"``.
    """
    size_low = model.prompt_encoder.mask_input_size[0]
    factor = gt_full.shape[-1] / size_low
    gt_low = low_res_masks(gt_full, size_low)
    plan = make_schedule(sim.num_clicks, sim.no_point_iters, np.random.default_rng([seed, step]))
    rngs = sample_rngs(seed, step, uids)
    state = first_prompts(gt_full, rngs, sim.point_prob, sim.box_noise_frac, sim.box_noise_max)
    each = grads is not None and grads.enabled
    emb = grads.leaf if each else embeddings
    mask_prompt, total, stats = None, 0.0, {}
    for it, kind in enumerate(plan):
        if kind == CLICK:
            state.add_clicks(*corrective_clicks(mask_prompt, gt_low, rngs, factor))
        sparse, dense = encode_prompts(model.prompt_encoder, state, mask_prompt)
        flags = _multimask_flags(sim.multimask, it, state)
        selected, losses = decode_step(model, emb, sparse, dense, flags, gt_low, loss_fn)
        loss = losses.mean() / len(plan)
        if each:
            grads.backward(loss)
            loss = loss.detach()
        total = total + loss
        stats[f"loss_it{it}"] = float(losses.detach().mean())
        mask_prompt = selected.detach()  # unthresholded logits, no gradient through the loop
    stats["passes"] = len(plan)
    return (total + grads.surrogate() if each else total), stats


def dice(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of boolean ``(B, 1, L, L)`` masks (1.0 when both are empty)."""
    inter = (pred & gt).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + gt.flatten(1).sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


@torch.no_grad()
def simulate_eval(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    gt_full: torch.Tensor,
    first: str,
    clicks: int,
    multimask: str = "first_point",
) -> list[torch.Tensor]:
    """Deterministic evaluation: the exact box or centre point, then ``clicks`` centre clicks.

    Returns:
        Per-sample Dice ``(B,)`` after the first prompt and after each click (``clicks + 1``
        tensors), measured on the low-res logits grid.
    """
    size_low = model.prompt_encoder.mask_input_size[0]
    factor = gt_full.shape[-1] / size_low
    gt_low = low_res_masks(gt_full, size_low)
    state = first_prompts(gt_full, None, 0.0, 0.0, 0.0, first=first)
    mask_prompt, out = None, []
    for it in range(clicks + 1):
        if it > 0:
            state.add_clicks(*corrective_clicks(mask_prompt, gt_low, None, factor))
        sparse, dense = encode_prompts(model.prompt_encoder, state, mask_prompt)
        flags = _multimask_flags(multimask, it, state)
        mask_prompt, _ = decode_step(model, embeddings, sparse, dense, flags, gt_low, None)
        out.append(dice(mask_prompt > 0, gt_low))
    return out
