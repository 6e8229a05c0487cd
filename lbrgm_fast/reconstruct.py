"""The Reconstructor: restores a batch of images with the loop, and what a batch needs around it.

The method is in three files: the objective J (objective.py), the loop that minimises it
(loop.py: start, Adam step, keep the best) and the start's candidates (candidates.py). This
driver adds what a restoration needs besides: input checks, restarts (R rows per observation
in one batch), early-stopping rules (early_stopping.py), resuming and checkpoints (state.py),
the step as the runtime runs it — compiled, reused from one batch to the next —
(runtime/step.py), profiling, and progress reports (progress.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lbrgm_fast.early_stopping import EarlyStop, RULES, holdout_mask, resolve_rule, restart_scores, score_function
from lbrgm_fast.errors import UserError
from lbrgm_fast.loop import AdamStep, optimise, start_latents
from lbrgm_fast.methods import MethodSettings, method_settings, resolve_preset
from lbrgm_fast.model import Generator
from lbrgm_fast.objective import TERM_NAMES, Objective, to_255
from lbrgm_fast.operators import Operator, SuperResolution, check_observation
from lbrgm_fast.perceptual import VGG16Features
from lbrgm_fast.priors import GaussianPrior
from lbrgm_fast.progress import ProgressReport, Reports
from lbrgm_fast.runtime import Profiler
from lbrgm_fast.runtime import reproducibility
from lbrgm_fast.runtime.engines import ForwardEngine, TorchEngine
from lbrgm_fast.runtime.step import (
    Step,
    StepOptions,
    StepProfile,
    load_optimizer_state,
    make_optimizer,
    make_step,
    prepare_networks,
    refill_latents,
)
from lbrgm_fast.state import ReconstructionState

__all__ = ["EarlyStop", "Monitor", "Objective", "ProgressReport", "ReconstructionResult", "ReconstructionState", "Reconstructor", "TERM_NAMES"]

#: Callable (images, ground_truth) -> (B,) distances, both [B, 3, H, W] in [-1, 1]; lower is better.
Monitor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Steps recorded by the torch profiler when a profile folder is given (after compilation).
PROFILED_STEPS = 5


@dataclass
class ReconstructionResult:
    """The restoration of a batch.

    Attributes:
        images: Restored images [B, 3, H, W] in [0, 1] (the generator output at the best iterate).
        w_plus: Best w+ [B, num_ws, w_dim].
        z: Best z [B, z_dim] (None for methods that do not optimise z).
        best_step: Step of the kept iterate, per sample.
        history: "step" [T] and one [T, B] array per loss term, plus "score" when early stopping.
        stopped: Per sample, None or why optimisation stopped early (e.g. non-finite loss).
        early_stop: The early-stopping rule actually used.
        initial_z: The best of the N1 candidates (None when starting at w_avg).
        timings: This run's seconds per phase (setup, candidates, optimise: which includes
            compile and monitor, finalise) and the process's peak memory so far (from the
            runtime's profiler; see `Profiler.report`).
        restart: Per sample, which of its restarts was kept (0 without restarts).
        restart_scores: Per sample, every restart's score at its kept iterate (lower is
            better; see `Reconstructor.run`'s `restarts`; inf for a restart that never had a
            finite loss).
        samples: With `run(..., samples=K)`: every restart's restoration [B, K, 3, H, W] in
            [0, 1] (the kept one is `images`); None otherwise.
        std: With samples: their per-pixel standard deviation [B, H, W] (over the K samples,
            K − 1 in the denominator, root mean of the three channels' variances), in [0, 1]
            units; None otherwise. Their per-pixel mean is `samples.mean(dim=1)`.
        sample_w_plus, sample_z, sample_steps: With samples: every sample's kept latents
            [B, K, num_ws, w_dim], [B, K, z_dim] (None without z) and steps [B][K].
    """

    images: torch.Tensor
    w_plus: torch.Tensor
    z: torch.Tensor | None
    best_step: list[int]
    history: dict[str, np.ndarray]
    stopped: list[str | None]
    early_stop: str
    initial_z: torch.Tensor | None
    timings: dict[str, object]
    restart: list[int] = field(default_factory=list)
    restart_scores: list[list[float]] = field(default_factory=list)
    samples: torch.Tensor | None = None
    std: torch.Tensor | None = None
    sample_w_plus: torch.Tensor | None = None
    sample_z: torch.Tensor | None = None
    sample_steps: list[list[int]] | None = None


def _rows(tensor: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor[index]


def _with_samples(kept: ReconstructionResult, every: ReconstructionResult, samples: int) -> ReconstructionResult:
    """`kept` (one row per observation) with every row of `every` (B·K rows, row b·K + k) as
    sample k of observation b."""
    def per_input(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, samples, *t.shape[1:])

    images = per_input(every.images)  # [B, K, 3, H, W]
    return replace(
        kept,
        samples=images,
        std=images.double().var(dim=1, correction=1).mean(dim=1).sqrt().float(),  # [B, H, W]
        sample_w_plus=per_input(every.w_plus),
        sample_z=None if every.z is None else per_input(every.z),
        sample_steps=[every.best_step[b * samples : (b + 1) * samples] for b in range(images.shape[0])],
    )


def _keep_best_restarts(result: ReconstructionResult, scores: np.ndarray, restarts: int) -> ReconstructionResult:
    """Per sample, the rows of `result` (B·R, row b·R + r) of the restart with the lowest score."""
    scores = np.where(np.isfinite(scores), scores, np.inf).reshape(-1, restarts)
    chosen = scores.argmin(axis=1)
    rows = np.arange(len(chosen)) * restarts + chosen
    index = torch.as_tensor(rows)
    return replace(
        result,
        images=result.images[index],
        w_plus=result.w_plus[index],
        z=_rows(result.z, index),
        best_step=[result.best_step[r] for r in rows],
        history={k: v if k == "step" else v[:, rows] for k, v in result.history.items()},
        stopped=[result.stopped[r] for r in rows],
        initial_z=_rows(result.initial_z, index),
        restart=chosen.tolist(),
        restart_scores=scores.tolist(),
    )


def _seed_list(seed: int | Sequence[int], batch: int) -> list[int]:
    if isinstance(seed, int):
        return [seed] * batch
    seeds = list(seed)
    if len(seeds) != batch:
        raise UserError(f"got {len(seeds)} seeds for {batch} observations")
    return seeds


@dataclass
class _Latents:
    """The latents a run optimises, Adam over them and the step built on them, kept for the
    next run (`Reconstructor._latents_for`)."""

    key: tuple
    w_plus: torch.Tensor
    z: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    step: Step


class Reconstructor:
    """Restores images by inverting a StyleGAN2 with L-BRGM (default), BRGM or no prior.

    Usable on its own in a pipeline (no files, no CLI):

        rec = Reconstructor.from_checkpoint("ffhq.pkl", device="cuda", method="lbrgm")
        result = rec.run(observation, Inpainting.from_preset("eyes", 1024))

    Keep one for a stream of batches: it keeps the last run's latents, optimiser and step, so a
    compiled step is compiled on the first batch and reused by every later one of the same
    batch size, operator and settings. It runs one batch at a time: use one per thread.

    Args:
        generator: A frozen generator from `load_generator`. With a compiled step on the CPU,
            its weights (and φ's) are stored channels-last from here on (`prepare_networks`).
        perceptual: φ, e.g. `VGG16Features.from_torchvision_state_dict(...)`.
        method: "lbrgm", "brgm" or "none".
        preset: L-BRGM (and none): "authors" (default; the authors' code) or "paper" (the
            paper text); BRGM: "brgm-pytorch" (default; BRGM's code) or "lbrgm-paper" (the
            copy the L-BRGM paper compared against). None: the method's default (methods.py).
        steps: Adam steps (2000 in the papers).
        candidates: N1, random z scored to pick the start (100 in the paper).
        candidate_batch: Candidates generated per forward pass (bounds memory).
        log_every: Steps between logs (history, progress).
        track_every: Steps between early-stopping scores: the kept iterate is the best of
            the scored ones. 1 (default) scores every step, as the authors' oracle does, on
            the device without waiting for it; logged steps are always scored.
        early_stop: "oracle" (best LPIPS vs ground truth; needs it), "holdout" (hold out
            `holdout_fraction` of the observed pixels from the pixel term and keep the iterate that predicts them
            best), "objective" (the iterate with the lowest J), "none" (last iterate), or
            "auto" (oracle with ground truth, else objective: measured best without ground
            truth, early_stopping.py).
        holdout_fraction: Fraction of observed pixels held out by the "holdout" rule.
        monitor: LPIPS(alex)-like distance for the oracle rule (required for "oracle").
        settings: Explicit loss weights, overriding `method`/`preset` (e.g. an ablation with
            `dataclasses.replace(method_settings("lbrgm"), perceptual_weight=0)`).
        step_options: How the optimisation step runs (compiled, precision, CUDA graphs);
            default eager float32, the research code's numerics.
        profile_dir: Write a torch profiler trace of `PROFILED_STEPS` steady-state steps of
            this Reconstructor's first run that reaches them there (trace.json, ops.txt; see
            `StepProfile`); its later runs do not overwrite it.
        engine: Runs the forward-only phases (candidate scoring, LPIPS monitoring); by default
            the torch modules themselves (`TorchEngine`).
        profiler: Where phase timings go (a new one if None); a shared one (a job's) keeps
            accumulating, while each result reports its own run's time.
        deterministic: Bitwise-identical results for the same seed on any CPU and thread
            count, at the cost of running on one thread; otherwise the default promise
            (`runtime.reproducibility`). CPU only.
    """

    def __init__(
        self,
        generator: Generator,
        perceptual: VGG16Features | None,
        method: str = "lbrgm",
        preset: str | None = None,
        steps: int = 2000,
        candidates: int = 100,
        candidate_batch: int = 8,
        log_every: int = 10,
        track_every: int = 1,
        early_stop: EarlyStop = "auto",
        holdout_fraction: float = 0.05,
        monitor: Monitor | None = None,
        settings: MethodSettings | None = None,
        step_options: StepOptions | None = None,
        profile_dir: str | Path | None = None,
        engine: ForwardEngine | None = None,
        profiler: Profiler | None = None,
        deterministic: bool = False,
    ) -> None:
        for name, value, least in (("steps", steps, 0), ("candidates", candidates, 1),
                                   ("candidate_batch", candidate_batch, 1), ("log_every", log_every, 1),
                                   ("track_every", track_every, 1)):
            if value < least:
                raise UserError(f"{name} must be >= {least}, got {value}")
        if early_stop not in RULES:
            raise UserError(f"unknown early-stopping rule {early_stop!r}; choose {', '.join(RULES[:-1])} or {RULES[-1]}")
        if not 0.0 < holdout_fraction < 0.5:
            raise UserError(f"holdout fraction must be in (0, 0.5), got {holdout_fraction}")
        self.generator = generator
        self.perceptual = perceptual
        self.method = method
        self.preset = resolve_preset(method, preset)  # validates the names early
        self.steps = steps
        self.candidates = candidates
        self.candidate_batch = candidate_batch
        self.log_every = log_every
        self.track_every = track_every
        self.early_stop: EarlyStop = early_stop
        self.holdout_fraction = holdout_fraction
        self.monitor = monitor
        self.settings = settings
        self.device = next(generator.parameters()).device
        self.step_options = step_options or StepOptions()
        self.step_options.check(self.device)
        reproducibility.check(deterministic, self.device)
        self.deterministic = deterministic
        prepare_networks([generator, perceptual], self.step_options, self.device)
        self.profile_dir = None if profile_dir is None else Path(profile_dir)
        self._profiled = False
        self._gaussian_priors: dict[int, GaussianPrior] = {}  # by number of mapping samples
        self._latents: _Latents | None = None
        self.engine: ForwardEngine = engine or TorchEngine(generator, perceptual, monitor)
        self.profiler = profiler or Profiler(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path,
        device: torch.device | str = "auto",
        *,
        vgg16: str | Path | None = None,
        alexnet: str | Path | None = None,
        monitor: bool = True,
        forward_backend: str = "auto",
        **options: object,
    ) -> Reconstructor:
        """A Reconstructor on the networks of a checkpoint or an engine plan, in one call.

        Args:
            source: A generator checkpoint in any supported format (`lbrgm-fast info`), or an
                engine plan made by `lbrgm-fast build` (told apart by content).
            device: "cpu", "cuda", "auto" (CUDA when available) or a torch.device.
            vgg16, alexnet: torchvision weight files for φ and the monitor (checkpoints only;
                default: the torch hub cache, downloaded when missing and online).
            monitor: Load the LPIPS(alex) monitor for the oracle rule when its weights are
                available (a run with a ground truth then stops by LPIPS).
            forward_backend: Plans: which backend runs the forward-only phases ("auto"
                measures and picks per phase; see `runtime.select`).
            **options: The constructor's other arguments (method, steps, step_options, ...).
        """
        from lbrgm_fast.loading import load_models
        from lbrgm_fast.runtime import resolve_device

        models = load_models(
            source, device if isinstance(device, torch.device) else resolve_device(device), vgg16=vgg16, alexnet=alexnet,
            monitor="optional" if monitor else "none", forward_backend=forward_backend,
        )
        return cls(models.generator, models.perceptual, monitor=models.monitor, engine=models.engine, **options)  # type: ignore[arg-type]

    def settings_for(self, operator: Operator) -> MethodSettings:
        if self.settings is not None:
            return self.settings
        factors = [m.factor for m in operator.modules() if isinstance(m, SuperResolution)]
        return method_settings(self.method, self.preset, superres_factor=math.prod(factors) if factors else None)

    # ----------------------------------------------------------------------------------------
    def run(
        self,
        observation: torch.Tensor,
        operator: Operator,
        ground_truth: torch.Tensor | None = None,
        seed: int | Sequence[int] = 0,
        restarts: int = 1,
        samples: int | None = None,
        resume: ReconstructionState | None = None,
        on_progress: Callable[[ProgressReport], None] | None = None,
        on_checkpoint: Callable[[ReconstructionState], None] | None = None,
        checkpoint_every: int = 0,
    ) -> ReconstructionResult:
        """Restore a batch of observations y = A x.

        Args:
            observation: y [B, 3, h, w] in [0, 1], exactly what `operator` produces at the
                generator's resolution (missing pixels zero for inpainting).
            operator: The forward operator A.
            ground_truth: Clean images [B, 3, H, W] in [0, 1] for the oracle early-stopping rule.
            seed: One seed for every sample, or one per sample; fixes the candidate draws and
                the holdout mask, so a run is reproducible, and batching changes a result only
                by rounding (see `--batch-size`).
            restarts: R independent optimisations of every observation, run together as one
                batch of B·R rows (row b·R + r): restart r of a sample with seed s starts from
                the best candidate of the draws of seed s + r, and all R share seed s's holdout
                mask, so their scores compare. Per observation, the result keeps the restart
                whose kept iterate scores best by the early-stopping rule (LPIPS vs the ground
                truth, or the holdout error; with the rules "objective" and "none", from 3
                restarts the one closest to their per-pixel mean in the missing region, with 2
                the lowest objective J at the kept iterate).
                `resume`, progress and checkpoint states hold all B·R rows. BRGM, which
                starts at w_avg, starts restart r > 0 at w_avg perturbed with seed s + r
                (`loop.perturbed_w_avg`).
            samples: K >= 2 (None: off): K restarts as `restarts=K`, keeping every one as
                well: `samples`, `std`, `sample_w_plus`, `sample_z`, `sample_steps` of the
                result (`images` is still the best-scored restart). Not with `restarts`.
            resume: A state saved through `on_checkpoint` to continue from.
            on_progress: Called for every `log_every`-th step (and the last), in order, one log
                interval late: the loop reads each log's values when the next log is made, so
                that it never waits for the device (progress.py).
            on_checkpoint: Called with the state every `checkpoint_every` steps (0: never),
                its tensors on the run's device; the loop goes on with the state object, so
                keep `state.to(...)` or `state.save(...)` (see `ReconstructionState`).

        The run is made under the Reconstructor's reproducibility promise (`deterministic`).
        """
        G = self.generator
        self._check_inputs(observation, operator, ground_truth, restarts, samples)
        restarts = samples or restarts
        seeds = _seed_list(seed, observation.shape[0])
        if restarts > 1:  # R rows per observation, row b·R + r
            observation = observation.repeat_interleave(restarts, dim=0)
            ground_truth = None if ground_truth is None else ground_truth.repeat_interleave(restarts, dim=0)
        candidate_seeds = [s + r for s in seeds for r in range(restarts)]  # restart r: seed s + r's draws
        holdout_seeds = [s for s in seeds for _ in range(restarts)]  # one holdout mask per observation
        batch = observation.shape[0]
        if resume is not None and resume.w_plus.shape[0] != batch:
            raise UserError(f"the saved state holds {resume.w_plus.shape[0]} rows; this run has {batch} "
                            f"({batch // restarts} observations x {restarts} restarts)")
        settings = self.settings_for(operator)
        rule = resolve_rule(self.early_stop, ground_truth is not None, self.monitor is not None)
        operator = operator.to(self.device)
        y = to_255(observation).to(self.device)
        gt = None if ground_truth is None else ground_truth.to(self.device).float() * 2 - 1
        holdout = None
        if rule == "holdout":
            holdout = holdout_mask(operator, G.img_resolution, tuple(y.shape[2:]), holdout_seeds, self.holdout_fraction, self.device)
        # Everything that computes runs under the Reconstructor's reproducibility promise.
        with reproducibility.reproducible_run(self.deterministic):
            prof = self.profiler
            started = prof.snapshot()

            with prof.phase("setup"):
                gaussian_prior = self._gaussian_prior(settings)
                keep = None if holdout is None else 1 - holdout
                objective = Objective(G, operator, self.perceptual, settings, y, keep, gaussian_prior)

            initial_z: torch.Tensor | None = None
            if resume is None:
                w_plus, z, initial_z = start_latents(objective, settings, candidate_seeds, self.engine, self.candidates,
                                                     self.candidate_batch, gaussian_prior, prof,
                                                     restarts=[r for _ in seeds for r in range(restarts)])
            else:
                resume = resume.to(self.device)
                w_plus, z = resume.w_plus.clone(), None if resume.z is None else resume.z.clone()
            latents = self._latents_for(objective, w_plus, z, settings, rule, None if resume is None else resume.optimizer)
            state = ReconstructionState.start(latents.w_plus, latents.z) if resume is None else resume
            rule_score = score_function(rule, self.engine, objective, gt, holdout)
            reports = Reports(self.steps, rule != "none", on_progress)

            @torch.no_grad()
            def score(images: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
                with prof.phase("monitor", sync=False):
                    return rule_score(images, total)

            def checkpoint(state: ReconstructionState) -> bool:
                if on_checkpoint is None or not checkpoint_every or state.step % checkpoint_every:
                    return True
                # The pending log is reported before the state that records it is saved: a run
                # resumed from this state does not report it again, and none is lost.
                if not reports.flush():
                    return False
                state.snapshot(latents.w_plus, latents.z, latents.optimizer)  # copies: the caller may keep them
                on_checkpoint(state)
                return True

            step: Callable = latents.step
            profile = None
            if self.profile_dir is not None and not self._profiled:
                profile = step = StepProfile(step, PROFILED_STEPS, self.profile_dir, skip=self.step_options.warmup_calls)
            with prof.phase("optimise"):
                try:
                    optimise(objective, latents.w_plus, latents.z, step, state, score, reports, checkpoint,
                             steps=self.steps, log_every=self.log_every, track_every=self.track_every)
                finally:
                    if profile is not None:
                        # However the loop ended: a run that ends or stops early keeps what it recorded.
                        profile.close()
                        self._profiled = profile.recorded > 0

            with prof.phase("finalise"), torch.no_grad():
                images = G.synthesis(state.best_w_plus, noise_mode=objective.noise_mode)
                images = ((images.float() + 1) / 2).clamp(0, 1)
            # Where restarts' agreement counts: the pixels A removes, else every pixel.
            observed = operator.observed()
            region = torch.ones_like(images[:1, :1]) if observed is None else 1 - observed
            return self._result(state, images, rule, initial_z, prof.report(since=started), restarts, keep_all=samples is not None,
                                region=region)

    def _gaussian_prior(self, settings: MethodSettings) -> GaussianPrior | None:
        """BRGM's w_avg and σ from `settings.w_avg_samples` mapping samples (None when the
        settings use neither), estimated once per Reconstructor and sample count."""
        if not (settings.gaussian_weight or settings.start == "w-avg"):
            return None
        n = settings.w_avg_samples
        if n not in self._gaussian_priors:
            self._gaussian_priors[n] = GaussianPrior.from_mapping(self.generator.mapping, self.generator.z_dim, num_samples=n)
        return self._gaussian_priors[n]

    def _check_inputs(self, observation: torch.Tensor, operator: Operator, ground_truth: torch.Tensor | None, restarts: int,
                      samples: int | None) -> None:
        res = self.generator.img_resolution
        if observation.ndim != 4:
            raise UserError(f"observation must be [B, 3, h, w], got {tuple(observation.shape)}")
        check_observation(operator, observation, res)
        if ground_truth is not None and tuple(ground_truth.shape) != (observation.shape[0], 3, res, res):
            raise UserError(f"ground truth must be [{observation.shape[0]}, 3, {res}, {res}], got {tuple(ground_truth.shape)}")
        if restarts < 1:
            raise UserError(f"restarts must be >= 1, got {restarts}")
        if samples is not None and samples < 2:
            raise UserError(f"samples must be >= 2 (one sample has no spread), got {samples}")
        if samples is not None and restarts != 1:
            raise UserError("samples are restarts that are all kept: give samples or restarts, not both")

    def _latents_for(
        self,
        objective: Objective,
        w_plus: torch.Tensor,
        z: torch.Tensor | None,
        settings: MethodSettings,
        rule: str,
        saved_optimizer: dict | None,
    ) -> _Latents:
        """The latents to optimise, holding the values `w_plus`, `z`, Adam over them (resumed
        from `saved_optimizer` if given) and the step of `objective` over them.

        A run with the previous run's shapes, settings and structure (operator, early-stopping
        rule): what a compiled step is specialised to, gets the previous run's tensors,
        optimiser and step back, refilled in place and rebound to `objective`, so that a
        compiled step is reused rather than traced again for every batch of a job.
        The previous run's result never shares these tensors: it holds copies.
        """
        key = (tuple(w_plus.shape), None if z is None else tuple(z.shape), settings, (objective.operator.describe(), rule))
        previous = self._latents
        if previous is not None and previous.key == key:
            refill_latents(previous.optimizer, [w_plus] + ([] if z is None else [z]), saved_optimizer)
            previous.step = previous.step.rebind(objective, self.profiler)
            return previous
        w_plus = w_plus.detach().clone().requires_grad_(True)
        z = None if z is None else z.detach().clone().requires_grad_(True)
        optimizer = make_optimizer([w_plus] + ([] if z is None else [z]), settings.lr, settings.betas, self.step_options, self.device)
        if saved_optimizer is not None:
            load_optimizer_state(optimizer, saved_optimizer)
        body = AdamStep(optimizer, w_plus, z, self.step_options.precision)
        self._latents = _Latents(key, w_plus, z, optimizer, make_step(body, objective, self.step_options, self.profiler))
        return self._latents

    def _result(
        self,
        state: ReconstructionState,
        images: torch.Tensor,
        rule: str,
        initial_z: torch.Tensor | None,
        timings: dict[str, object],
        restarts: int,
        keep_all: bool,
        region: torch.Tensor,
    ) -> ReconstructionResult:
        """The result of the finished `state` (its kept iterates' `images`), the best restart per
        observation, and with `keep_all` every restart as a sample."""
        history = state.history_arrays(scored=rule != "none")
        result = ReconstructionResult(
            images=images.cpu(),
            w_plus=state.best_w_plus.detach().cpu(),
            z=None if state.best_z is None else state.best_z.detach().cpu(),
            best_step=state.best_step.cpu().tolist(),
            history=history,
            stopped=[None if a else "the loss became NaN or infinite; kept the best iterate before it" for a in state.alive.cpu().tolist()],
            early_stop=rule,
            initial_z=None if initial_z is None else initial_z.cpu(),
            timings=timings,
        )
        kept = restart_scores(rule, images, region, restarts, state.best_score, state.best_total)
        best = _keep_best_restarts(result, kept.cpu().double().numpy(), restarts)
        return _with_samples(best, result, restarts) if keep_all else best
