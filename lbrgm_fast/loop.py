"""The optimisation loop: initialise → step → keep the best → report.

    w+, z   = start_latents(...)       best of N1 random z: w_i = M(z*) (L-BRGM); w_avg (BRGM;
                                       its restarts after the first: w_avg perturbed, seeded)
    Adam over w+ (and z), lr 0.1
    for k in 0 … steps:
        terms, images = J(w+, z)       objective.py; then backward and Adam's update (AdamStep)
        every track_every steps (1: every step, as the authors): score the images and keep the
            best-scored iterate, on the device, without reading anything back
        every log_every steps: append to the history, report
    the last iterate is only evaluated: there is no update after it

The driver (reconstruct.py) wraps this in what a restoration needs besides the method:
batches and restarts, resuming, checkpoints, compiling the step (runtime/step.py), profiling,
and progress read from the device one log late (progress.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from lbrgm_fast.candidates import best_candidates
from lbrgm_fast.methods import MethodSettings
from lbrgm_fast.objective import TOTAL, Objective
from lbrgm_fast.priors import GaussianPrior
from lbrgm_fast.progress import Reports
from lbrgm_fast.runtime import Profiler
from lbrgm_fast.runtime.engines import ForwardEngine
from lbrgm_fast.runtime.step import AUTOCAST_DTYPES, FP16_LOSS_SCALE, Precision, StepOutput, low_precision_blocks
from lbrgm_fast.state import ReconstructionState


#: How far from w_avg BRGM's restarts after the first start: w_avg + ψ·(M(z) − w_avg), the
#: truncation trick's ψ (0: w_avg, 1: a plain sample of the mapping network).
BRGM_RESTART_PSI = 0.5


def perturbed_w_avg(gaussian_prior: GaussianPrior, mapping: torch.nn.Module, z_dim: int, seed: int) -> torch.Tensor:
    """w_avg + ψ·(M(z) − w_avg), [w_dim], z ~ N(0, I) drawn on the CPU with `seed` (ψ = `BRGM_RESTART_PSI`)."""
    w_avg = gaussian_prior.w_avg
    z = torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed)).to(w_avg.device)
    with torch.no_grad():
        w = mapping(z)[0, 0]
    return w_avg + BRGM_RESTART_PSI * (w - w_avg)


def start_latents(
    objective: Objective,
    settings: MethodSettings,
    seeds: Sequence[int],
    engine: ForwardEngine,
    candidates: int,
    candidate_batch: int,
    gaussian_prior: GaussianPrior | None,
    profiler: Profiler,
    restarts: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Where each row starts: (w+ [B, num_ws, w_dim], z [B, z_dim] or None, the chosen z* or None).

    BRGM starts at w_avg and does not optimise z; a row that is restart r > 0 of its
    observation (`restarts[row]`; default every row restart 0) starts at
    `perturbed_w_avg(seed)` instead, so that R restarts are R different runs. L-BRGM and the
    no-prior ablation start at the best of `candidates` seeded random z (`best_candidates`,
    one draw per seed), with every layer of w+ at M(z*); L-BRGM optimises z from z*.
    """
    G = objective.generator
    if settings.start == "w-avg":
        assert gaussian_prior is not None
        restarts = restarts or [0] * len(seeds)
        starts = [gaussian_prior.w_avg if r == 0 else perturbed_w_avg(gaussian_prior, G.mapping, G.z_dim, s) for s, r in zip(seeds, restarts)]
        return torch.stack(starts)[:, None].expand(-1, G.num_ws, -1).clone(), None, None
    with profiler.phase("candidates"):
        initial_z = best_candidates(objective, engine, seeds, candidates, candidate_batch)
    with torch.no_grad():
        w_plus = G.mapping(initial_z).clone()
    return w_plus, initial_z.clone() if settings.optimize_z else None, initial_z


class AdamStep:
    """One step of the method: J at the current iterate, its gradient, Adam's update.

    Call it with the objective; it updates `w_plus` (and `z`) in place and returns
    `StepOutput`: (terms [len(TERM_NAMES), B], images [B, 3, H, W] in [-1, 1], w+, z) of the
    iterate *before* the update, what the loop logs and keeps. Nothing in it reads a value
    back to the host. In float32 it is the research code's step; runtime/step.py compiles
    and / or captures this same function.

    Args:
        optimizer: Adam over [w_plus] (+ [z]) (`runtime.step.make_optimizer`).
        w_plus, z: The latents, [B, num_ws, w_dim] and [B, z_dim] or None.
        precision: "fp32", or "bf16" / "fp16" autocast for the networks' forward; fp16 scales
            the loss by `FP16_LOSS_SCALE` and hands Adam the unscaled gradient.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, w_plus: torch.Tensor, z: torch.Tensor | None, precision: Precision = "fp32") -> None:
        self.optimizer, self.w_plus, self.z, self.precision = optimizer, w_plus, z, precision
        self.params = [w_plus] + ([] if z is None else [z])
        self.device_type = w_plus.device.type
        self.dtype = AUTOCAST_DTYPES.get(precision)
        self.loss_scale = FP16_LOSS_SCALE if precision == "fp16" else 1.0

    def __call__(self, objective: Objective) -> StepOutput:
        w_before = self.w_plus.detach().clone()
        z_before = None if self.z is None else self.z.detach().clone()
        self.optimizer.zero_grad(set_to_none=True)
        # cache_enabled=False: cached casts must not outlive a CUDA graph capture (torch's
        # CUDA-graph notes); the weights are frozen, so the cache would hold nothing anyway.
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None, cache_enabled=False), self._blocks(objective):
            terms, images = objective(self.w_plus, self.z)
        (terms[TOTAL].sum() * self.loss_scale).backward()
        if self.loss_scale != 1.0:
            for p in self.params:
                p.grad.div_(self.loss_scale)  # type: ignore[union-attr]
        self.optimizer.step()
        return terms.detach(), images.detach(), w_before, z_before

    def _blocks(self, objective: Objective) -> contextlib.AbstractContextManager:
        """The synthesis blocks this precision runs in low precision, for the forward pass."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return low_precision_blocks(objective.generator.synthesis, self.precision)


def optimise(
    objective: Objective,
    w_plus: torch.Tensor,
    z: torch.Tensor | None,
    step: Callable[[], StepOutput],
    state: ReconstructionState,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reports: Reports,
    checkpoint: Callable[[ReconstructionState], bool],
    *,
    steps: int,
    log_every: int,
    track_every: int = 1,
) -> None:
    """Run the loop from `state.step` to `steps`, keeping the best iterate in `state`.

    Args:
        objective: J.
        w_plus, z: The latents `step` updates in place (for the last iterate's evaluation).
        step: One `AdamStep` of `objective`, as the runtime runs it.
        state: Where the run stands; updated on the device.
        score: Early-stopping score of an iterate's images [B, 3, H, W] in [-1, 1] and its J (B,),
            (B,), lower is better.
        reports: Progress, handed on one log late; says when every row has stopped.
        checkpoint: Called after each update with the state; False stops the loop.
        steps: Adam steps.
        log_every: Steps between logs (history, reports); the last iterate is always logged.
        track_every: Steps between early-stopping scores (best iterate); logged steps are
            scored too. 1 (the authors' oracle) scores every iterate; its cost is one forward
            of the score per step (`lbrgm-fast bench --modes eager-fp32,eager-fp32-tracked`).
    """
    for k in range(state.step, steps + 1):
        if k < steps:
            terms, images, w_k, z_k = step()  # J at iterate k, then Adam's update to k + 1
        else:
            with torch.no_grad():  # the last iterate is only evaluated
                terms, images = objective(w_plus, z)
            w_k, z_k = w_plus.detach(), None if z is None else z.detach()
        state.alive = state.alive & torch.isfinite(terms[TOTAL])
        logged = k == steps or k % log_every == 0
        if logged or k % track_every == 0:
            scores = score(images, terms[TOTAL])
            state.keep_best(k, scores, terms[TOTAL], w_k, z_k)
        if logged:
            state.log(k, terms, scores)
            if not reports.push(state, images):
                break  # every row had stopped by the previous log
        if k == steps:
            break
        state.step = k + 1
        if not checkpoint(state):
            break
    reports.flush()
