"""Which iterate a run keeps: the early-stopping rules and their scores.

* "oracle" (the papers'): the best LPIPS(alex) against the ground truth over the tracked
  iterates (every `track_every` steps, and every logged one); it needs the ground truth, so it is an evaluation tool, not a restoration one.
* "holdout": without ground truth, a seeded `holdout_fraction` of the observed pixels is left
  out of the pixel term (φ still sees them: objective.py), and the iterate that predicts them
  best is kept.
* "objective": without ground truth, the iterate with the lowest objective J (Adam does not
  lower J at every step); it costs nothing, J being computed by every step anyway.
* "none": the last iterate.
* "auto": oracle with a ground truth and a monitor, objective otherwise: measured on in-range
  targets (bench/bench_stopping.py, bench/RESULTS.md), it was the best rule without ground
  truth on average, by a small margin over the last iterate (holdout kept worse iterates).

A score is per row (B,), lower is better; the loop keeps, per row, the tracked iterate with
the lowest score (`ReconstructionState.keep_best`).

Among restarts (reconstruct.py) the kept one is the restart whose kept iterate scores best,
but for the rules "objective" and "none", where the restarts agree instead: with at least
`AGREEMENT_RESTARTS` of them, the one closest to their per-pixel mean in the missing region
(`agreement_scores`, measured better than the lowest J), else the one with the lowest J.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.objective import Objective
from lbrgm_fast.operators import Operator
from lbrgm_fast.runtime.engines import ForwardEngine

EarlyStop = Literal["auto", "oracle", "holdout", "objective", "none"]
RULES: tuple[str, ...] = get_args(EarlyStop)
#: Added to a row's seed for its holdout mask, so that the mask's draw is independent of the
#: candidates' (which use the seed itself).
HOLDOUT_SEED_OFFSET = 1_000_003
#: Restarts from which the rules "objective" and "none" keep the one closest to their mean (two
#: are equally close).
AGREEMENT_RESTARTS = 3
#: The rules whose restarts are chosen by agreement (`agreement_scores`).
AGREEING_RULES = ("objective", "none")


def resolve_rule(rule: str, has_ground_truth: bool, has_monitor: bool) -> str:
    """The rule a run uses ("auto" resolved); UserError when "oracle" cannot be used."""
    if rule == "auto":
        rule = "oracle" if has_ground_truth and has_monitor else "objective"
    if rule == "oracle" and not (has_ground_truth and has_monitor):
        raise UserError("early stopping 'oracle' needs a ground truth image and an LPIPS monitor")
    return rule


def holdout_mask(operator: Operator, resolution: int, size: tuple[int, int], seeds: Sequence[int], fraction: float, device: torch.device) -> torch.Tensor:
    """Seeded per-row Bernoulli(`fraction`) mask over the observed pixels, [B, 1, h, w]
    (h, w = `size`, the observation's), 1 on the held-out pixels."""
    with torch.no_grad():
        observed = (operator(torch.ones(1, 3, resolution, resolution, device=device))[:, :1] > 0.5).float()
    # Drawn on the CPU (seeded generators give the same draws on every device), masked on `device`.
    draws = [torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(s + HOLDOUT_SEED_OFFSET)) for s in seeds]
    return (torch.cat(draws) < fraction).float().to(device) * observed


def score_function(
    rule: str,
    engine: ForwardEngine,
    objective: Objective,
    ground_truth: torch.Tensor | None,
    holdout: torch.Tensor | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The score of `rule` for an iterate's images [B, 3, H, W] in [-1, 1] and objective J (B,), (B,).

    Args:
        rule: A resolved rule ("oracle", "holdout", "objective" or "none").
        engine: Runs the LPIPS(alex) monitor (oracle).
        objective: Measures the held-out pixels (holdout).
        ground_truth: [B, 3, H, W] in [-1, 1] (oracle).
        holdout: The held-out pixels [B, 1, h, w] (holdout).
    """
    if rule == "oracle":
        assert ground_truth is not None
        return lambda images, total: engine.lpips(images.float(), ground_truth).float()
    if rule == "holdout":
        assert holdout is not None
        return lambda images, total: objective.holdout_error(images, holdout)
    if rule == "objective":
        return lambda images, total: total.detach().float()
    # "none": every iterate scores alike, and ties go to the latest.
    return lambda images, total: torch.zeros(images.shape[0], device=images.device)


def restart_scores(
    rule: str, images: torch.Tensor, region: torch.Tensor, restarts: int, best_score: torch.Tensor, best_total: torch.Tensor
) -> torch.Tensor:
    """What each restart is compared by to keep one per observation, (B·R,), lower is better.

    With ground truth or a holdout, the rule's score at its kept iterate (`best_score`);
    without ("objective", "none"), the restarts' agreement (`agreement_scores`) from
    `AGREEMENT_RESTARTS` restarts on, else J at the kept iterate (`best_total`). A restart
    that never had a finite loss scores inf under every rule (its kept images are its start).
    images: [B·R, 3, H, W] at the kept iterates; region: [1, 1, H, W]; best_*: (B·R,).
    """
    if rule not in AGREEING_RULES:
        return best_score
    if restarts < AGREEMENT_RESTARTS:
        return best_total
    agreement = agreement_scores(images, region, restarts)
    return torch.where(torch.isfinite(best_total).to(agreement.device), agreement, torch.inf)


def agreement_scores(images: torch.Tensor, region: torch.Tensor, restarts: int) -> torch.Tensor:
    """Each restart's mean squared distance to its observation's restarts' per-pixel mean over
    `region`, (B·R,), lower is better (the medoid of the restarts scores lowest).

    images: [B·R, 3, H, W], row b·R + r; region: [1, 1, H, W], 1 where the distance counts.
    """
    group = images.double().reshape(-1, restarts, *images.shape[1:])  # [B, R, 3, H, W]
    squared = (group - group.mean(dim=1, keepdim=True)).square() * region.double()
    return (squared.flatten(2).sum(dim=2) / (region.sum() * images.shape[1])).reshape(-1)
