"""L-BRGM / BRGM reconstruction: the objective, the initialisation, the optimisation loop.

Images at this API are float tensors [B, 3, H, W] in [0, 1]. Internally the data terms compare
images in [0, 255], the scale at which the published λ values were calibrated
(../shared/REFERENCE.md §1), and the generator works in its raw [-1, 1] scale.

The loop never waits for the device: every `log_every` steps it records the loss terms and
tracks the best iterate for early stopping on the device, and starts copying what progress
reports (and whether any sample is still finite) to the host; it reads that copy one log later,
when the device is long past it. So progress arrives one log interval late, and a batch whose
every sample has stopped (non-finite loss) runs one interval more before the loop ends.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from lbrgm_fast.errors import UserError
from lbrgm_fast.methods import MethodSettings, method_settings
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Operator, SuperResolution, check_observation
from lbrgm_fast.perceptual import VGG16Features
from lbrgm_fast.priors import CosinePrior, GaussianPrior, LatentPrior, MappingPrior
from lbrgm_fast.runtime import Profiler
from lbrgm_fast.runtime import reproducibility
from lbrgm_fast.runtime.engines import ForwardEngine, TorchEngine
from lbrgm_fast.runtime.step import (
    StepOptions,
    StepProfile,
    load_optimizer_state,
    make_optimizer,
    make_step,
    prepare_networks,
    refill_latents,
)

EarlyStop = Literal["auto", "oracle", "holdout", "none"]
#: Callable (images, ground_truth) -> (B,) distances, both [B, 3, H, W] in [-1, 1]; lower is better.
Monitor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Steps recorded by the torch profiler when a profile folder is given (after compilation).
PROFILED_STEPS = 5
TERM_NAMES = ("total", "pixel", "perceptual", "mapping", "latent", "gaussian", "cosine")


def to_255(images_01: torch.Tensor) -> torch.Tensor:
    return images_01.float() * 255.0


def generator_to_255(images: torch.Tensor) -> torch.Tensor:
    """Raw generator output (about [-1, 1]) to [0, 255], unclamped as in the reference code."""
    return (images.float() + 1.0) * 127.5


class Objective(nn.Module):
    """Per-sample L-BRGM / BRGM / no-prior loss J(w+, z) for fixed observations.

    Args:
        generator: Frozen StyleGAN2.
        operator: Forward operator A.
        perceptual: φ (LPIPS-VGG features); None only when the perceptual weight is 0.
        settings: Loss weights (methods.py).
        observation: y in [0, 255], [B, 3, h, w].
        keep: Observation-space mask [B, 1, h, w] of pixels used by the data terms (1 = use);
            the rest are held out for early stopping. None uses every pixel.
        gaussian_prior: BRGM's prior (needed when the settings weight it).
        noise_mode: Generator noise ("const": the stored buffers, as the reference code).
    """

    def __init__(
        self,
        generator: Generator,
        operator: Operator,
        perceptual: VGG16Features | None,
        settings: MethodSettings,
        observation: torch.Tensor,
        keep: torch.Tensor | None,
        gaussian_prior: GaussianPrior | None = None,
        noise_mode: Literal["const", "none"] = "const",
    ) -> None:
        super().__init__()
        self.generator = generator
        self.operator = operator
        self.perceptual = perceptual
        self.settings = settings
        self.noise_mode: Literal["const", "none"] = noise_mode
        self.register_buffer("keep", keep)
        self.register_buffer("observation", self._view(observation))
        if perceptual is None and settings.perceptual_weight:
            raise UserError("the perceptual term needs VGG16 features (perceptual weight is not 0)")
        targets: list[torch.Tensor] = []
        if perceptual is not None:
            with torch.no_grad():
                targets = [f.detach() for f in perceptual.features(self.observation / 127.5 - 1)]
        # Buffers, so that `.to()` / `.cuda()` move them with the observation.
        self._num_targets = len(targets)
        for k, target in enumerate(targets):
            self.register_buffer(f"target_features_{k}", target, persistent=False)
        self.mapping_prior = MappingPrior(generator.mapping, settings.prior_reduction)
        self.latent_prior = LatentPrior(settings.prior_reduction)
        if settings.gaussian_weight and gaussian_prior is None:
            raise ValueError("settings weight the Gaussian prior but none was given")
        self.gaussian_prior = gaussian_prior if settings.gaussian_weight else None
        self.cosine_prior = CosinePrior()

    @property
    def target_features(self) -> list[torch.Tensor]:
        """φ(y): the observation's perceptual features, one tensor per tap (empty without φ)."""
        return [getattr(self, f"target_features_{k}") for k in range(self._num_targets)]

    def _view(self, measured: torch.Tensor) -> torch.Tensor:
        return measured if self.keep is None else measured * self.keep

    def perceptual_term(self, measured_255: torch.Tensor, target_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """LPIPS-VGG / D of a measured image against precomputed target features, (B,)."""
        if self.perceptual is None:
            return measured_255.new_zeros(measured_255.shape[0])
        feats = self.perceptual.features(measured_255 / 127.5 - 1)
        return self.perceptual.feature_distance(feats, list(target_features)) / self.perceptual.num_elements

    def data_terms(self, measured_255: torch.Tensor, observation: torch.Tensor, target_features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel, perceptual) per sample for measured images against an observation and its features."""
        pixel = (measured_255 - observation).square().flatten(1).mean(dim=1)
        return pixel, self.perceptual_term(measured_255, target_features)

    def forward(self, w_plus: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (terms [len(TERM_NAMES), B] with the weighted total first, images [B, 3, H, W] in [-1, 1])."""
        s = self.settings
        images = self.generator.synthesis(w_plus, noise_mode=self.noise_mode)
        measured = self._view(self.operator(generator_to_255(images)))
        pixel, perceptual = self.data_terms(measured, self.observation, self.target_features)
        zero = torch.zeros_like(pixel)
        mapping = self.mapping_prior(w_plus, z) if z is not None and s.mapping_weight else zero
        latent = self.latent_prior(z) if z is not None and s.latent_weight else zero
        gaussian = self.gaussian_prior(w_plus) if self.gaussian_prior is not None else zero
        cosine = self.cosine_prior(w_plus) if s.cosine_weight else zero
        total = (
            s.pixel_weight * pixel
            + s.perceptual_weight * perceptual
            + s.mapping_weight * mapping
            + s.latent_weight * latent
            + s.gaussian_weight * gaussian
            + s.cosine_weight * cosine
        )
        return torch.stack([total, pixel, perceptual, mapping, latent, gaussian, cosine]), images

    def holdout_error(self, images: torch.Tensor, observation_full: torch.Tensor, holdout: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the held-out observed pixels, (B,) (early stopping without ground truth)."""
        measured = self.operator(generator_to_255(images))
        sq = (measured - observation_full).square() * holdout
        return sq.flatten(1).sum(dim=1) / (holdout.flatten(1).sum(dim=1) * measured.shape[1]).clamp_min(1)


@dataclass
class ReconstructionState:
    """Everything needed to continue an interrupted run (all tensors on the CPU when saved)."""

    step: int
    w_plus: torch.Tensor
    z: torch.Tensor | None
    optimizer: dict
    best_w_plus: torch.Tensor
    best_z: torch.Tensor | None
    best_score: torch.Tensor
    best_step: torch.Tensor
    alive: torch.Tensor
    history_steps: list[int] = field(default_factory=list)
    history: list[torch.Tensor] = field(default_factory=list)  # each [len(TERM_NAMES) + 1, B]

    def to(self, device: torch.device | str) -> ReconstructionState:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        optim = {
            "state": {k: {n: move(v) for n, v in st.items()} for k, st in self.optimizer["state"].items()},
            "param_groups": self.optimizer["param_groups"],
        }
        return ReconstructionState(
            self.step, move(self.w_plus), move(self.z), optim, move(self.best_w_plus), move(self.best_z),
            move(self.best_score), move(self.best_step), move(self.alive), list(self.history_steps),
            [move(h) for h in self.history],
        )


@dataclass
class Progress:
    """What the loop reports every `log_every` steps (host values)."""

    step: int
    steps: int
    terms: dict[str, list[float]]  # name -> per-sample values
    score: list[float] | None  # early-stopping score per sample (LPIPS or holdout error)
    best_step: list[int]
    images: torch.Tensor | None = None  # current images [B, 3, H, W] in [-1, 1], on the device


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


def _keep_best_restarts(result: ReconstructionResult, scores: np.ndarray, restarts: int) -> ReconstructionResult:
    """Per sample, the rows of `result` (B·R, row b·R + r) of the restart with the lowest score."""
    scores = np.where(np.isfinite(scores), scores, np.inf).reshape(-1, restarts)
    chosen = scores.argmin(axis=1)
    rows = np.arange(len(chosen)) * restarts + chosen
    index = torch.as_tensor(rows)
    pick = lambda t: None if t is None else t[index]  # noqa: E731
    return replace(
        result,
        images=result.images[index],
        w_plus=result.w_plus[index],
        z=pick(result.z),
        best_step=[result.best_step[r] for r in rows],
        history={k: v if k == "step" else v[:, rows] for k, v in result.history.items()},
        stopped=[result.stopped[r] for r in rows],
        initial_z=pick(result.initial_z),
        restart=chosen.tolist(),
        restart_scores=scores.tolist(),
    )


@dataclass
class _LoopLatents:
    """The latents a run optimises and Adam over them, kept for the next run (`_loop_latents`)."""

    key: tuple
    w_plus: torch.Tensor
    z: torch.Tensor | None
    optimizer: torch.optim.Optimizer


def _seed_list(seed: int | Sequence[int], batch: int) -> list[int]:
    if isinstance(seed, int):
        return [seed] * batch
    seeds = list(seed)
    if len(seeds) != batch:
        raise UserError(f"got {len(seeds)} seeds for {batch} observations")
    return seeds


@dataclass
class _LogRead:
    """One log's values copied to the host without waiting for the device (`start`)."""

    step: int
    values: torch.Tensor  # [terms + 1, B]: TERM_NAMES, then the score
    best_step: torch.Tensor  # [B]
    alive: torch.Tensor  # [B]
    images: torch.Tensor | None  # on the device, for `Progress.images`
    copied: torch.cuda.Event | None  # CUDA: recorded after the copies

    @classmethod
    def start(cls, step: int, values: torch.Tensor, best_step: torch.Tensor, alive: torch.Tensor, images: torch.Tensor | None) -> _LogRead:
        """On CUDA: non-blocking copies into pinned host memory, then an event; elsewhere the
        values are on the host already (fresh tensors, which the loop replaces, never changes)."""
        if values.device.type != "cuda":
            return cls(step, values, best_step, alive, images, None)
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in (values, best_step, alive)]
        copied = torch.cuda.Event()
        copied.record()
        return cls(step, *host, images, copied)

    def wait(self) -> None:
        """Until the copies have landed (long done when read one log later)."""
        if self.copied is not None:
            self.copied.synchronize()


class _Reports:
    """Progress reports one log late: `push` hands on the previous log and keeps the new one,
    `flush` hands on the kept one. Both return whether any sample was still finite then."""

    def __init__(self, steps: int, rule: str, on_progress: Callable[[Progress], None] | None) -> None:
        self.steps, self.rule, self.on_progress = steps, rule, on_progress
        self.pending: _LogRead | None = None

    def push(self, read: _LogRead) -> bool:
        alive = self.flush()
        self.pending = read
        return alive

    def flush(self) -> bool:
        read, self.pending = self.pending, None
        if read is None:
            return True
        read.wait()
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    step=read.step,
                    steps=self.steps,
                    terms={name: read.values[i].tolist() for i, name in enumerate(TERM_NAMES)},
                    score=None if self.rule == "none" else read.values[len(TERM_NAMES)].tolist(),
                    best_step=read.best_step.tolist(),
                    images=read.images,
                )
            )
        return bool(read.alive.any())


class Reconstructor:
    """Restores images by inverting a StyleGAN2 with L-BRGM (default), BRGM or no prior.

    Usable on its own in a pipeline (no files, no CLI):

        rec = Reconstructor(generator, perceptual, method="lbrgm", preset="authors")
        result = rec.run(observation, Inpainting.from_preset("eyes", 1024))

    Keep one for a stream of batches: it keeps the last run's latents and optimiser, so a
    compiled step is compiled on the first batch and reused by every later one of the same
    batch size, operator and settings. It runs one batch at a time: use one per thread.

    Args:
        generator: A frozen generator from `load_generator`. With a compiled step on the CPU,
            its weights (and φ's) are stored channels-last from here on (`prepare_networks`).
        perceptual: φ, e.g. `VGG16Features.from_torchvision_state_dict(...)`.
        method: "lbrgm", "brgm" or "none".
        preset: "authors" (default; the authors' code) or "paper" (the paper text).
        steps: Adam steps (2000 in the papers).
        candidates: N1, random z scored to pick the start (100 in the paper).
        candidate_batch: Candidates generated per forward pass (bounds memory).
        log_every: Steps between host reads (history, early stopping, progress).
        early_stop: "oracle" (best LPIPS vs ground truth; needs it), "holdout" (hold out
            `holdout_fraction` of the observed pixels and keep the iterate that predicts them
            best), "none" (last iterate), or "auto" (oracle with ground truth, else holdout).
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
        preset: str = "authors",
        steps: int = 2000,
        candidates: int = 100,
        candidate_batch: int = 8,
        log_every: int = 10,
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
                                   ("candidate_batch", candidate_batch, 1), ("log_every", log_every, 1)):
            if value < least:
                raise UserError(f"{name} must be >= {least}, got {value}")
        if early_stop not in ("auto", "oracle", "holdout", "none"):
            raise UserError(f"unknown early-stopping rule {early_stop!r}; choose auto, oracle, holdout or none")
        if not 0.0 < holdout_fraction < 0.5:
            raise UserError(f"holdout fraction must be in (0, 0.5), got {holdout_fraction}")
        method_settings(method, preset)  # validates the names early
        self.generator = generator
        self.perceptual = perceptual
        self.method = method
        self.preset = preset
        self.steps = steps
        self.candidates = candidates
        self.candidate_batch = candidate_batch
        self.log_every = log_every
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
        self._gaussian_prior: GaussianPrior | None = None
        self._latents: _LoopLatents | None = None
        self.engine: ForwardEngine = engine or TorchEngine(generator, perceptual, monitor)
        self.profiler = profiler or Profiler(self.device)

    # ----------------------------------------------------------------------------------------
    def settings_for(self, operator: Operator) -> MethodSettings:
        if self.settings is not None:
            return self.settings
        factors = [m.factor for m in operator.modules() if isinstance(m, SuperResolution)]
        return method_settings(self.method, self.preset, superres_factor=math.prod(factors) if factors else None)

    def _resolve_early_stop(self, ground_truth: torch.Tensor | None) -> str:
        rule = self.early_stop
        if rule == "auto":
            rule = "oracle" if ground_truth is not None and self.monitor is not None else "holdout"
        if rule == "oracle" and (ground_truth is None or self.monitor is None):
            raise UserError("early stopping 'oracle' needs a ground truth image and an LPIPS monitor")
        return rule

    def _holdout_mask(self, operator: Operator, shape: torch.Size, seeds: list[int]) -> torch.Tensor:
        """Seeded per-sample Bernoulli mask over the observed pixels [B, 1, h, w]."""
        with torch.no_grad():
            observed = operator(torch.ones(1, 3, self.generator.img_resolution, self.generator.img_resolution, device=self.device))
        observed = (observed[:, :1] > 0.5).float().cpu()
        masks = []
        for s in seeds:
            gen = torch.Generator().manual_seed(s + 1_000_003)  # independent of the candidate stream
            masks.append((torch.rand(1, 1, *shape[2:], generator=gen) < self.holdout_fraction).float() * observed)
        return torch.cat(masks).to(self.device)

    @torch.no_grad()
    def best_candidates(self, objective: Objective, seeds: list[int]) -> torch.Tensor:
        """z [B, z_dim]: per sample, the best of N1 seeded random z by the perceptual term
        (by the pixel term when the perceptual term is off). Forward passes only, on the engine."""
        G = self.generator
        best = torch.empty(len(seeds), G.z_dim, device=self.device)
        for seed in sorted(set(seeds)):
            rows = [i for i, s in enumerate(seeds) if s == seed]
            z_all = torch.randn(self.candidates, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
            scores = []
            for z in z_all.split(self.candidate_batch):
                measured = objective.operator(generator_to_255(self.engine.generate(z)))
                # Score every candidate against every observation that shares this seed.
                per_row = []
                shared_feats = None  # without a holdout mask every row sees the same candidates
                for r in rows:
                    view = measured if objective.keep is None else measured * objective.keep[r : r + 1]
                    if objective.perceptual is None:
                        per_row.append((view - objective.observation[r : r + 1]).square().flatten(1).mean(dim=1))
                        continue
                    if objective.keep is not None or shared_feats is None:
                        shared_feats = self.engine.features(view / 127.5 - 1)
                    feats = shared_feats
                    targets = [t[r : r + 1] for t in objective.target_features]
                    per_row.append(objective.perceptual.feature_distance(feats, targets) / objective.perceptual.num_elements)
                scores.append(torch.stack(per_row))  # [rows, chunk]
            choice = torch.cat(scores, dim=1).argmin(dim=1)
            best[rows] = z_all[choice]
        return best

    # ----------------------------------------------------------------------------------------
    def run(
        self,
        observation: torch.Tensor,
        operator: Operator,
        ground_truth: torch.Tensor | None = None,
        seed: int | Sequence[int] = 0,
        restarts: int = 1,
        resume: ReconstructionState | None = None,
        on_progress: Callable[[Progress], None] | None = None,
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
                the holdout mask, so a run is reproducible (and batching doesn't change it).
            restarts: R independent optimisations of every observation, run together as one
                batch of B·R rows (row b·R + r): restart r of a sample with seed s starts from
                the best candidate of the draws of seed s + r, and all R share seed s's holdout
                mask, so their scores compare. Per observation, the result keeps the restart
                whose kept iterate scores best by the early-stopping rule (LPIPS vs the ground
                truth, or the holdout error; with rule "none", the lowest objective J).
                `resume`, progress and checkpoint states hold all B·R rows.
            resume: A state saved through `on_checkpoint` to continue from.
            on_progress: Called for every `log_every`-th step (and the last), in order, one log
                interval late: the loop reads each log's values when the next log is made, so
                that it never waits for the device.
            on_checkpoint: Called with the state every `checkpoint_every` steps (0: never); the
                state's tensors are not changed afterwards, so it can be kept or saved as is.

        The run is made under the Reconstructor's reproducibility promise (`deterministic`).
        """
        with reproducibility.reproducible_run(self.deterministic):
            G = self.generator
            res = G.img_resolution
            if observation.ndim != 4:
                raise UserError(f"observation must be [B, 3, h, w], got {tuple(observation.shape)}")
            check_observation(operator, observation, res)
            if ground_truth is not None and tuple(ground_truth.shape) != (observation.shape[0], 3, res, res):
                raise UserError(f"ground truth must be [{observation.shape[0]}, 3, {res}, {res}], got {tuple(ground_truth.shape)}")
            if restarts < 1:
                raise UserError(f"restarts must be >= 1, got {restarts}")
            seeds = _seed_list(seed, observation.shape[0])
            if restarts > 1:
                observation = observation.repeat_interleave(restarts, dim=0)
                ground_truth = None if ground_truth is None else ground_truth.repeat_interleave(restarts, dim=0)
            candidate_seeds = [s + r for s in seeds for r in range(restarts)]
            holdout_seeds = [s for s in seeds for _ in range(restarts)]
            batch = observation.shape[0]
            if resume is not None and resume.w_plus.shape[0] != batch:
                raise UserError(f"the saved state holds {resume.w_plus.shape[0]} rows; this run has {batch} "
                                f"({batch // restarts} observations x {restarts} restarts)")
            settings = self.settings_for(operator)
            rule = self._resolve_early_stop(ground_truth)
            operator = operator.to(self.device)
            y = to_255(observation).to(self.device)
            gt = None if ground_truth is None else ground_truth.to(self.device).float() * 2 - 1
            holdout = self._holdout_mask(operator, y.shape, holdout_seeds) if rule == "holdout" else None
            prof = self.profiler
            started = prof.snapshot()

            with prof.phase("setup"):
                if (settings.gaussian_weight or settings.start == "w-avg") and self._gaussian_prior is None:
                    # BRGM's w_avg and σ from 10,000 mapping samples: once per Reconstructor.
                    self._gaussian_prior = GaussianPrior.from_mapping(G.mapping, G.z_dim)
                keep = None if holdout is None else 1 - holdout
                objective = Objective(G, operator, self.perceptual, settings, y, keep, self._gaussian_prior)

            initial_z: torch.Tensor | None = None
            if resume is None:
                if settings.start == "w-avg":
                    assert self._gaussian_prior is not None
                    w_plus = self._gaussian_prior.w_avg.expand(batch, G.num_ws, -1).clone()
                    z = None
                else:
                    with prof.phase("candidates"):
                        initial_z = self.best_candidates(objective, candidate_seeds)
                    with torch.no_grad():
                        w_plus = G.mapping(initial_z).clone()
                    z = initial_z.clone() if settings.optimize_z else None
                state = None
            else:
                state = resume.to(self.device)
                w_plus, z = state.w_plus.clone(), None if state.z is None else state.z.clone()

            w_plus, z, optimizer, fresh = self._loop_latents(
                w_plus, z, settings, (operator.describe(), rule), None if state is None else state.optimizer
            )
            if state is None:
                state = ReconstructionState(
                    step=0, w_plus=w_plus.detach(), z=None if z is None else z.detach(), optimizer={},
                    best_w_plus=w_plus.detach().clone(), best_z=None if z is None else z.detach().clone(),
                    best_score=torch.full((batch,), math.inf, device=self.device),
                    best_step=torch.zeros(batch, dtype=torch.long, device=self.device),
                    alive=torch.ones(batch, dtype=torch.bool, device=self.device),
                )

            # The step may switch the generator's blocks to low precision; the caller's generator
            # is left as it was found.
            low_precision = G.synthesis.low_precision_resolutions
            try:
                with prof.phase("optimise"):
                    self._loop(objective, optimizer, w_plus, z, fresh, state, rule, y, gt, holdout, on_progress, on_checkpoint, checkpoint_every)
            finally:
                G.synthesis.low_precision_resolutions = low_precision

            with prof.phase("finalise"), torch.no_grad():
                images = G.synthesis(state.best_w_plus, noise_mode=objective.noise_mode)
                images = ((images.float() + 1) / 2).clamp(0, 1)

            history = {"step": np.asarray(state.history_steps, dtype=np.int64)}
            if state.history:
                stacked = torch.stack(state.history).cpu().numpy()  # [T, terms + 1, B]
                for i, name in enumerate(TERM_NAMES):
                    history[name] = stacked[:, i]
                if rule != "none":
                    history["score"] = stacked[:, len(TERM_NAMES)]
            alive = state.alive.cpu().tolist()
            result = ReconstructionResult(
                images=images.cpu(),
                w_plus=state.best_w_plus.detach().cpu(),
                z=None if state.best_z is None else state.best_z.detach().cpu(),
                best_step=state.best_step.cpu().tolist(),
                history=history,
                stopped=[None if a else "the loss became NaN or infinite; kept the best iterate before it" for a in alive],
                early_stop=rule,
                initial_z=None if initial_z is None else initial_z.cpu(),
                timings=prof.report(since=started),
            )
            scores = state.best_score.cpu().double().numpy()
            if rule == "none" and "total" in history:
                # No score: compare the objective at each row's kept iterate.
                at = np.searchsorted(history["step"], result.best_step)
                scores = history["total"][at, np.arange(batch)].astype(np.float64)
            return _keep_best_restarts(result, scores, restarts)

    def _loop_latents(
        self,
        w_plus: torch.Tensor,
        z: torch.Tensor | None,
        settings: MethodSettings,
        structure: tuple[str, str],
        saved_optimizer: dict | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.optim.Optimizer, bool]:
        """The latents to optimise, holding the values `w_plus`, `z`, and Adam over them
        (resumed from `saved_optimizer` if given); also whether they are new.

        A run with the previous run's shapes, settings and `structure` (operator description,
        early-stopping rule): what the compiled step is specialised to, gets the previous run's
        tensors and optimiser back, refilled in place, so that a compiled step is reused rather
        than traced again for every batch of a job (seconds to tens of seconds each).
        The previous run's result never shares these tensors: it holds copies.
        """
        key = (tuple(w_plus.shape), None if z is None else tuple(z.shape), settings, structure)
        reused = self._latents
        if reused is not None and reused.key == key:
            values = [w_plus] + ([] if z is None else [z])
            refill_latents(reused.optimizer, values, saved_optimizer)
            return reused.w_plus, reused.z, reused.optimizer, False
        w_plus = w_plus.detach().clone().requires_grad_(True)
        z = None if z is None else z.detach().clone().requires_grad_(True)
        params = [w_plus] + ([] if z is None else [z])
        optimizer = make_optimizer(params, settings.lr, settings.betas, self.step_options, self.device)
        if saved_optimizer is not None:
            load_optimizer_state(optimizer, saved_optimizer)
        self._latents = _LoopLatents(key, w_plus, z, optimizer)
        return w_plus, z, optimizer, True

    def _loop(
        self,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        w_plus: torch.Tensor,
        z: torch.Tensor | None,
        fresh: bool,
        state: ReconstructionState,
        rule: str,
        y: torch.Tensor,
        gt: torch.Tensor | None,
        holdout: torch.Tensor | None,
        on_progress: Callable[[Progress], None] | None,
        on_checkpoint: Callable[[ReconstructionState], None] | None,
        checkpoint_every: int,
    ) -> None:
        step_fn = make_step(objective, optimizer, w_plus, z, self.step_options, self.profiler, fresh=fresh)
        profile = None
        if self.profile_dir is not None and not self._profiled:
            profile = step_fn = StepProfile(step_fn, PROFILED_STEPS, self.profile_dir, skip=self.step_options.warmup_calls)
        reports = _Reports(self.steps, rule, on_progress)
        try:
            for step in range(state.step, self.steps + 1):
                if step == self.steps:
                    # The final iterate is only evaluated: there is no update after it.
                    with torch.no_grad():
                        terms, images = objective(w_plus, z)
                    w_now, z_now = w_plus.detach(), None if z is None else z.detach()
                else:
                    terms, images, w_now, z_now = step_fn()
                state.alive = state.alive & torch.isfinite(terms[0])
                if step == self.steps or step % self.log_every == 0:
                    logged = self._log(state, step, terms, images, w_now, z_now, rule, y, gt, holdout, objective, on_progress)
                    if not reports.push(logged):
                        break  # every sample had stopped by the previous log
                if step == self.steps:
                    break
                state.step = step + 1
                if on_checkpoint is not None and checkpoint_every and state.step % checkpoint_every == 0:
                    # The pending log is reported before the state that records it is saved:
                    # a run resumed from this state does not report it again, and none is lost.
                    if not reports.flush():
                        break
                    # Copies: the caller may keep the state while the loop goes on updating in place.
                    state.w_plus, state.z = w_plus.detach().clone(), None if z is None else z.detach().clone()
                    state.optimizer = copy.deepcopy(optimizer.state_dict())
                    on_checkpoint(state)
            reports.flush()
        finally:
            if profile is not None:
                # However the loop ended: a run that ends or stops early keeps what it recorded.
                profile.close()
                self._profiled = profile.recorded > 0

    @torch.no_grad()
    def _log(
        self,
        state: ReconstructionState,
        step: int,
        terms: torch.Tensor,
        images: torch.Tensor,
        w_plus: torch.Tensor,
        z: torch.Tensor | None,
        rule: str,
        y: torch.Tensor,
        gt: torch.Tensor | None,
        holdout: torch.Tensor | None,
        objective: Objective,
        on_progress: Callable[[Progress], None] | None,
    ) -> _LogRead:
        """Record the loss terms and keep the best iterate (the one whose image was just made),
        on the device; returns this log's values on their way to the host (for `_Reports`)."""
        with self.profiler.phase("monitor", sync=False):
            if rule == "oracle":
                assert gt is not None and self.monitor is not None
                score = self.engine.lpips(images.float(), gt).float()
            elif rule == "holdout":
                assert holdout is not None
                score = objective.holdout_error(images, y, holdout)
            else:
                score = torch.zeros_like(terms[0])  # "none": ties go to the latest iterate
            better = state.alive & (score <= state.best_score)
            state.best_score = torch.where(better, score, state.best_score)
            state.best_step = torch.where(better, torch.full_like(state.best_step, step), state.best_step)
            state.best_w_plus = torch.where(better[:, None, None], w_plus.detach(), state.best_w_plus)
            if z is not None and state.best_z is not None:
                state.best_z = torch.where(better[:, None], z.detach(), state.best_z)
            state.history_steps.append(step)
            state.history.append(torch.cat([terms, score[None]]).float())
            # Every step returns fresh images (a CUDA-graph step returns a copy of its static
            # output), so the reference stays this log's until `_Reports` hands it on.
            shown = None if on_progress is None else images
            return _LogRead.start(step, state.history[-1], state.best_step, state.alive, shown)
