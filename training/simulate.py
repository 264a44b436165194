"""SAM's interactive training simulation: 11 decoder passes on one image embedding.

The recipe (Kirillov et al. 2023, appendix A "Training algorithm"):

1. First prompt: with probability ``point_prob`` (1/2) a point drawn uniformly from the ground
   truth; otherwise the ground-truth box with Gaussian noise on each coordinate, std = 10% of the
   box side (per axis), at most ``box_noise_max`` pixels. Models with a text prompt can also
   start from the label name's text embedding (``text_prob``; then the clicks follow as usual).
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

import numpy as np
import torch
import torch.nn.functional as F

from .passgrad import PassGradients
from .prompts import (  # noqa: F401  (re-exported: the simulation's public helpers)
    BOX,
    POINT,
    TEXT,
    PromptState,
    center_point,
    corrective_clicks,
    encode_groups,
    error_point,
    first_prompts,
    mask_box,
    noisy_box,
    take,
    uniform_point,
)

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


# loss_fn(logits (b, M, L, L), iou_pred (b, M), gt (b, 1, L, L)) -> per-sample loss (b,)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _groups(flags: torch.Tensor) -> list[tuple[bool, torch.Tensor]]:
    """``[(flag, indices)]`` for the values ``True``/``False`` present in ``(B,)`` ``flags``."""
    out = []
    for flag in (True, False):
        idx = torch.nonzero(flags == flag).flatten()
        if idx.numel():
            out.append((flag, idx))
    return out


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


def _multimask_flags(policy: str, iteration: int, state: PromptState) -> torch.Tensor:
    if policy == "always":
        return torch.ones_like(state.first_is_box)
    if policy == "never" or iteration > 0:
        return torch.zeros_like(state.first_is_box)
    return state.kind == POINT  # "first_point": ambiguous single point only


def run_iteration(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    state: PromptState,
    mask_prompt: torch.Tensor | None,
    flags: torch.Tensor,
    gt_low: torch.Tensor,
    loss_fn: LossFn | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode the prompts and run the decoder: ``(selected logits (B,1,L,L), loss (B,)|None)``.

    One decoder call per group of samples with a common prompt-token count (and multimask
    flag); a uniform batch is one call on the tensors as they are.
    """
    groups = encode_groups(model.prompt_encoder, state, mask_prompt)
    outs = [
        decode_step(
            model,
            take(embeddings, idx),
            sparse,
            dense,
            take(flags, idx),
            take(gt_low, idx),
            loss_fn,
        )
        for idx, sparse, dense in groups
    ]
    if len(outs) == 1:
        return outs[0]
    inverse = torch.argsort(torch.cat([idx for idx, _, _ in groups]))
    selected = torch.cat([o[0] for o in outs])[inverse]
    losses = None if loss_fn is None else torch.cat([o[1] for o in outs])[inverse]
    return selected, losses


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
    text: torch.Tensor | None = None,
    prompt_box: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the full interactive recipe on one batch and return the mean loss.

    Args:
        model: a :class:`~napari_sam_med.modeling.Sam` (or a module exposing
            ``prompt_encoder`` and ``mask_decoder``).
        embeddings: ``(B, C, h, w)`` image embeddings, computed once for the whole step.
        gt_full: ``(B, 1, S, S)`` float ground truth on the padded model input.
        loss_fn: per-sample loss (see :data:`LossFn`).
        sim: a ``SimConfig`` (num_clicks, no_point_iters, point_prob, box_noise_*, multimask,
            text_prob).
        seed / step / uids: randomness keys (schedule per step, the rest per sample).
        grads: back-propagate each pass at once (see :mod:`training.passgrad`); the returned
            loss then carries the summed gradients through a zero-valued surrogate term, so
            ``loss.backward()`` gives the same gradients with one pass's graph alive at a time.
        text: ``(B, D)`` embeddings of each sample's label name (text first prompts), or None.
        prompt_box: ``(B, 4)`` first-prompt boxes of propagation samples (NaN rows: drawn).

    Returns:
        ``(loss, stats)``: the loss averaged over samples and iterations (a scalar with grad),
        and per-iteration mean losses ``{"loss_it0": ..., ...}`` plus ``"passes"``.
    """
    size_low = model.prompt_encoder.mask_input_size[0]
    factor = gt_full.shape[-1] / size_low
    gt_low = low_res_masks(gt_full, size_low)
    plan = make_schedule(sim.num_clicks, sim.no_point_iters, np.random.default_rng([seed, step]))
    rngs = sample_rngs(seed, step, uids)
    state = first_prompts(
        gt_full,
        rngs,
        sim.point_prob,
        sim.box_noise_frac,
        sim.box_noise_max,
        text=text,
        text_prob=getattr(sim, "text_prob", 0.0),
        given_box=prompt_box,
    )
    each = grads is not None and grads.enabled
    emb = grads.leaf if each else embeddings
    mask_prompt, total, stats = None, 0.0, {}
    for it, kind in enumerate(plan):
        if kind == CLICK:
            state.add_clicks(*corrective_clicks(mask_prompt, gt_low, rngs, factor))
        flags = _multimask_flags(sim.multimask, it, state)
        selected, losses = run_iteration(model, emb, state, mask_prompt, flags, gt_low, loss_fn)
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
    text: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Deterministic evaluation: the exact box, centre point or label text, then centre clicks.

    ``first`` is ``"box"``, ``"point"`` or ``"text"`` (needs ``text``, ``(B, D)``).

    Returns:
        Per-sample Dice ``(B,)`` after the first prompt and after each click (``clicks + 1``
        tensors), measured on the low-res logits grid.
    """
    size_low = model.prompt_encoder.mask_input_size[0]
    factor = gt_full.shape[-1] / size_low
    gt_low = low_res_masks(gt_full, size_low)
    state = first_prompts(gt_full, None, 0.0, 0.0, 0.0, first=first, text=text)
    mask_prompt, out = None, []
    for it in range(clicks + 1):
        if it > 0:
            state.add_clicks(*corrective_clicks(mask_prompt, gt_low, None, factor))
        flags = _multimask_flags(multimask, it, state)
        mask_prompt, _ = run_iteration(model, embeddings, state, mask_prompt, flags, gt_low, None)
        out.append(dice(mask_prompt > 0, gt_low))
    return out
