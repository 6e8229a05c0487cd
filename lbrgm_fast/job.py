"""A reconstruction job: inputs on disk -> restorations in per-input folders.

The CLI builds a `RunOptions` and calls `run_job`; everything else (loading, batching, writing,
resuming, per-input errors) happens here, on top of the `Reconstructor` API. One bad input
never stops the others: its error is reported and the job goes on.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from lbrgm_fast.errors import ImageError, UserError
from lbrgm_fast.io import atomic_write, find_inputs, load_image, save_image, save_npz, unique_names, write_json
from lbrgm_fast.loading import Models
from lbrgm_fast.loading import load_models as load_source_models
from lbrgm_fast.methods import resolve_preset
from lbrgm_fast.metrics import masked_mean, psnr_from_mse
from lbrgm_fast.objective import TERM_NAMES
from lbrgm_fast.operators import Identity, Inpainting, Operator, SuperResolution, infer_factor
from lbrgm_fast.perceptual import LpipsAlex
from lbrgm_fast.plots import heatmap, plot_curves
from lbrgm_fast.progress import ProgressReport
from lbrgm_fast.reconstruct import ReconstructionResult, Reconstructor
from lbrgm_fast.runtime import Profiler, resolve_device
from lbrgm_fast.runtime import reproducibility
from lbrgm_fast.runtime.host_memory import retained_host_memory
from lbrgm_fast.runtime.step import StepOptions, auto_step_options, default_precision, emulation_note
from lbrgm_fast.state import ReconstructionState

Task = Literal["inpaint", "superres", "project"]
STATE_FILE = "state.pt"


@dataclass
class RunOptions:
    """Everything `lbrgm-fast run` can be told (see the CLI help for each option)."""

    inputs: list[str]
    out: Path = Path("lbrgm-out")
    checkpoint: str | None = None
    engine: str | None = None
    task: Task = "inpaint"
    mask: str | None = None
    mask_preset: str | None = None
    invert_mask: bool = False
    factor: int | None = None
    kernel: str = "bicubic"
    degrade: bool = False
    ground_truth: str | None = None
    method: str = "lbrgm"
    preset: str | None = None
    steps: int = 2000
    candidates: int = 100
    seed: int = 0
    batch_size: int = 1
    restarts: int = 1
    #: K >= 2: K restarts, all kept (sample-k.png, mean.png, uncertainty.png / .npy); None: off.
    samples: int | None = None
    device: str = "auto"
    early_stop: str = "auto"
    log_every: int = 10
    track_every: int = 1
    frames: int = 0
    vgg16: str | None = None
    alexnet: str | None = None
    strict: bool = False
    overwrite: bool = False
    resume: bool = False
    checkpoint_every: int = 100
    forward_backend: str = "auto"
    compile: bool | None = None
    precision: str | None = None
    cuda_graphs: bool | None = None
    memory_budget: float = 1.0
    profile: Path | None = None
    #: CPU runs only: keep freed host memory in the process while the job runs, so the step
    #: reuses its buffers instead of faulting fresh pages in every step (`runtime.host_memory`).
    #: Off by default in the library because it changes glibc's allocator settings for the
    #: whole process; the CLI turns it on.
    retain_host_memory: bool = False
    #: Bitwise-identical results on any CPU and thread count, on one thread
    #: (`runtime.reproducibility`); otherwise the default promise.
    deterministic: bool = False

    @property
    def rows_per_input(self) -> int:
        """Rows each input takes in a batch: its samples, or its restarts."""
        return self.samples or self.restarts


@dataclass
class InputOutcome:
    """What happened to one input."""

    name: str
    source: str
    folder: Path | None = None
    status: Literal["done", "failed", "skipped"] = "done"
    message: str = ""
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    #: The seconds per phase of the batch this input ran in, and peak memory (report.json's).
    timings: dict[str, object] = field(default_factory=dict)


class Reporter(Protocol):
    """What the job tells its caller (the CLI renders it; tests can record it)."""

    def note(self, message: str) -> None: ...

    def batch_started(self, names: Sequence[str], steps: int) -> None: ...

    def progress(self, progress: ProgressReport) -> None: ...

    def batch_finished(self) -> None: ...


class SilentReporter:
    def note(self, message: str) -> None:
        pass

    def batch_started(self, names: Sequence[str], steps: int) -> None:
        pass

    def progress(self, progress: ProgressReport) -> None:
        pass

    def batch_finished(self) -> None:
        pass


def versions() -> dict[str, str]:
    import lbrgm_fast

    return {"lbrgm_fast": lbrgm_fast.__version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------
# Operators and observations


def build_operator(options: RunOptions, resolution: int, factor: int | None) -> Operator:
    """The forward operator for the task (the SR factor comes from the input when not given)."""
    if options.task == "project":
        return Identity()
    if options.task == "superres":
        assert factor is not None
        return SuperResolution(factor, kernel=options.kernel)  # type: ignore[arg-type]
    if options.mask and options.mask_preset:
        raise UserError("give either --mask or --mask-preset, not both")
    if options.mask:
        return Inpainting.from_file(options.mask, resolution=resolution, invert=options.invert_mask)
    if options.mask_preset:
        return Inpainting.from_preset(options.mask_preset, resolution)
    raise UserError("--task inpaint needs --mask FILE or --mask-preset NAME")


@dataclass
class PreparedInput:
    outcome: InputOutcome
    observation: torch.Tensor  # [3, h, w] in [0, 1]
    ground_truth: torch.Tensor | None
    factor: int | None
    saved_state: ReconstructionState | None = None  # this input's rows of an interrupted run (--resume)


def observation_factor(side: int, resolution: int, factor: int | None, name: str = "") -> int:
    """The super-resolution factor of a `side` px observation for a `resolution` px generator
    (`infer_factor`), which must equal `factor` when one is given (ImageError, `name` first)."""
    inferred = infer_factor(side, resolution)
    if factor is not None and factor != inferred:
        raise ImageError(f"{name}a {side}x{side} observation is x{inferred} of {resolution} px, but --factor is {factor}")
    return inferred


def prepare_input(path: Path, options: RunOptions, resolution: int, outcome: InputOutcome, mask: torch.Tensor | None) -> PreparedInput:
    """Load one input as an observation consistent with the operator (raises ImageError)."""
    gt = None
    factor = options.factor
    if options.task == "superres" and not options.degrade:
        image, notes = load_image(path, size=None, strict=True)
        factor = observation_factor(image.shape[-1], resolution, factor, name=f"{path}: ")
        observation = image
    else:
        image, notes = load_image(path, size=resolution, strict=options.strict)
        if options.degrade:
            gt = image
            if options.task == "superres":
                assert factor is not None, "run_job refuses --degrade superres without --factor"
                observation = SuperResolution(factor, kernel=options.kernel)(image[None])[0]
            else:
                observation = image
        else:
            observation = image
        if mask is not None:
            # Missing pixels are zero in an observation, whatever the user's file holds there.
            observation = observation * mask[0]
    if options.ground_truth:
        gt_path = Path(options.ground_truth)
        gt_path = gt_path / path.name if gt_path.is_dir() else gt_path
        gt, gt_notes = load_image(gt_path, size=resolution, strict=options.strict)
        notes += [f"ground truth: {n}" for n in gt_notes]
    outcome.notes += notes
    return PreparedInput(outcome, observation.contiguous(), gt, factor)


# ---------------------------------------------------------------------------------------------
# Writing results


def input_metrics(
    result: ReconstructionResult,
    index: int,
    ground_truth: torch.Tensor | None,
    mask: torch.Tensor | None,
    lpips: LpipsAlex | None,
) -> dict[str, float | int | None]:
    """Sample `index`'s metrics (report.json's): its best step, kept restart and final loss
    terms, and with a ground truth [3, H, W] its PSNR (in the missing region too, for a mask
    [1, H, W]) and LPIPS(alex) when the monitor is loaded."""
    restored = result.images[index]
    history = result.history
    metrics: dict[str, float | int | None] = {
        "best_step": result.best_step[index],
        **({"restart": result.restart[index]} if len(result.restart_scores[index]) > 1 else {}),
        **{f"final_{k}": float(history[k][-1, index] if history[k].ndim == 2 else history[k][-1])
           for k in TERM_NAMES if k in history and len(history[k])},
    }
    if ground_truth is not None:
        squared = (restored.float() - ground_truth.float()).square()[None]  # [1, 3, H, W]
        metrics["psnr"] = float(psnr_from_mse(squared.mean()))
        if mask is not None:
            metrics["psnr_missing_region"] = float(psnr_from_mse(masked_mean(squared, (1 - mask)[None])[0]))
        if lpips is not None:
            # The monitor lives on the run's device; the restored image is already on the host.
            device = next(lpips.parameters()).device
            with torch.no_grad():
                metrics["lpips_alex"] = float(lpips((restored[None] * 2 - 1).to(device), (ground_truth[None] * 2 - 1).to(device))[0])
    return metrics


def write_outputs(
    prepared: PreparedInput,
    index: int,
    result: ReconstructionResult,
    operator: Operator,
    options: RunOptions,
    settings: dict,
    extra_report: dict,
    lpips: LpipsAlex | None,
) -> None:
    """Everything one restored input leaves in its folder (each file atomic)."""
    folder = prepared.outcome.folder
    assert folder is not None
    restored = result.images[index]
    save_image(folder / "restored.png", restored)
    save_image(folder / "observation.png", prepared.observation)
    mask = None if (observed := operator.observed()) is None else observed[0].cpu()
    if mask is not None:
        save_image(folder / "merged.png", mask * prepared.observation + (1 - mask) * restored)
    z = result.z[index].numpy() if result.z is not None else np.zeros(0, dtype=np.float32)
    uncertainty, sample_latents = ({}, {}) if result.samples is None else write_samples(folder, result, index, mask)
    save_npz(folder / "latents.npz", w_plus=result.w_plus[index].numpy(), z=z, step=np.int64(result.best_step[index]), **sample_latents)
    history = {k: v[:, index] if v.ndim == 2 else v for k, v in result.history.items()}
    if len(history["step"]):
        curves = {k: history[k] for k in (*TERM_NAMES, "score") if k in history and np.any(history[k] != 0)}
        plot_curves(history["step"], curves, folder / "curves.png")
    metrics = input_metrics(result, index, prepared.ground_truth, mask, lpips)
    prepared.outcome.metrics = metrics
    prepared.outcome.timings = result.timings
    report = {
        "input": prepared.outcome.source,
        "status": "done" if result.stopped[index] is None else "failed",
        "stopped": result.stopped[index],
        "notes": prepared.outcome.notes,
        "seed": options.seed,
        "early_stop": result.early_stop,
        "settings": settings,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()},
        "metrics": metrics,
        "timings": result.timings,
        "restarts": {"count": len(result.restart_scores[index]), "kept": result.restart[index], "scores": result.restart_scores[index]},
        **uncertainty,
        "history": {k: np.asarray(v).tolist() for k, v in history.items()},
        "versions": versions(),
        **extra_report,
    }
    write_json(folder / "report.json", report)
    (folder / STATE_FILE).unlink(missing_ok=True)


def write_samples(folder: Path, result: ReconstructionResult, index: int, mask: torch.Tensor | None) -> tuple[dict, dict]:
    """--samples: sample-k.png, mean.png, uncertainty.png (the per-pixel std as a colour map with
    a scale bar) and uncertainty.npy (its values [H, W], float32, [0, 1] units). Returns the
    report's "uncertainty" entry and every sample's arrays for latents.npz."""
    assert result.samples is not None and result.std is not None and result.sample_w_plus is not None
    samples, std = result.samples[index], result.std[index]  # [K, 3, H, W], [H, W]
    for k, sample in enumerate(samples):
        save_image(folder / f"sample-{k}.png", sample)
    save_image(folder / "mean.png", samples.mean(dim=0))
    figure = heatmap(std.numpy(), f"std of {len(samples)} samples")
    atomic_write(folder / "uncertainty.png", lambda f: figure.save(f, format="PNG"))
    atomic_write(folder / "uncertainty.npy", lambda f: np.save(f, std.numpy().astype(np.float32)))
    region = (1 - mask) if mask is not None else torch.ones_like(std)[None]  # [1, H, W]: super-resolution: everywhere
    latents = {"samples_w_plus": result.sample_w_plus[index].numpy(), "samples_step": np.asarray(result.sample_steps[index], dtype=np.int64)}
    if result.sample_z is not None:
        latents["samples_z"] = result.sample_z[index].numpy()
    return {
        "uncertainty": {
            "samples": len(samples),
            "mean_std_missing_region": float(masked_mean(std[None, None], region[None])[0]),
            "mean_std": float(std.mean()),
            "definition": "per-pixel standard deviation over the samples (K - 1 in the denominator), "
                          "root mean of the channels' variances, images in [0, 1]; missing region: the mask's hole, "
                          "or the whole image without a mask",
        },
    }, latents


# ---------------------------------------------------------------------------------------------
# Resuming: one state file per input, its rows of the batch state (`ReconstructionState.slice`,
# `stack`, `save`, `load`).


def _load_state(path: Path) -> ReconstructionState | None:
    try:
        return ReconstructionState.load(path)
    except Exception:  # noqa: BLE001 - a damaged state file only means starting over
        return None


# ---------------------------------------------------------------------------------------------


def needs_monitor(options: RunOptions) -> bool:
    """Whether a run of `options` loads the LPIPS(alex) monitor: with a ground truth, for the
    oracle rule (explicit or auto)."""
    return bool(options.ground_truth or options.degrade) and options.early_stop in ("auto", "oracle")


def load_models(options: RunOptions, device: torch.device, need_monitor: bool, reporter: Reporter | None = None) -> Models:
    """The models `options` name (`--checkpoint` or `--engine`), with the monitor when
    `need_monitor` (required with `--early-stop oracle`), from `loading.load_models`."""
    if bool(options.checkpoint) == bool(options.engine):
        raise UserError("give exactly one of --checkpoint CKPT or --engine PLAN")
    monitor = ("required" if options.early_stop == "oracle" else "optional") if need_monitor else "none"
    return load_source_models(
        options.engine or options.checkpoint,  # type: ignore[arg-type]
        device, kind="plan" if options.engine else "checkpoint", vgg16=options.vgg16, alexnet=options.alexnet,
        monitor=monitor, forward_backend=options.forward_backend, reporter=reporter,
    )


def check_options(options: RunOptions) -> None:
    """Raise UserError for option problems that concern the whole job, before any (slow) model
    loading and without touching a device (a cluster's driver checks them too)."""
    if options.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if options.task not in ("inpaint", "superres", "project"):
        raise UserError(f"unknown task {options.task!r}; choose inpaint, superres or project")
    if options.degrade and options.task == "superres" and options.factor is None:
        raise UserError("--degrade with --task superres needs --factor")
    if options.ground_truth and not Path(options.ground_truth).exists():
        raise UserError(f"--ground-truth {options.ground_truth}: no such file or folder")
    for flag, value, least in (("--steps", options.steps, 0), ("--candidates", options.candidates, 1),
                               ("--log-every", options.log_every, 1), ("--track-every", options.track_every, 1), ("--frames", options.frames, 0),
                               ("--restarts", options.restarts, 1)):
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    if options.samples is not None and options.samples < 2:
        raise UserError(f"--samples must be >= 2, got {options.samples}")
    if options.samples is not None and options.restarts != 1:
        raise UserError("--samples K runs K restarts and keeps them all: give --samples or --restarts, not both")
    resolve_preset(options.method, options.preset)
    for flag, folder in (("--out", options.out), ("--profile", options.profile)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UserError(f"{flag} {folder} is a file; give a folder (it is made if missing)")


def step_options_for(options: RunOptions, device: torch.device, reporter: Reporter) -> StepOptions:
    """The step's settings on `device` (raises UserError for a bad combination), with the notes
    they call for (slow emulated precision, a profile that records nothing)."""
    reproducibility.check(options.deterministic, device)
    step_options = auto_step_options(
        device, steps=options.steps, compile=options.compile, precision=options.precision, cuda_graphs=options.cuda_graphs,  # type: ignore[arg-type]
        memory_budget=options.memory_budget,
    )
    if (note := emulation_note(step_options, device)) is not None:
        reporter.note(note)
    if options.profile is not None and options.steps <= step_options.warmup_calls:
        reporter.note(f"--profile records steps after the first {step_options.warmup_calls} (compilation); "
                      f"a run of {options.steps} steps writes no trace")
    return step_options


def select_inputs(options: RunOptions) -> tuple[list[InputOutcome], list[InputOutcome]]:
    """(every input's outcome in order, the ones to restore). Inputs that cannot be found fail,
    inputs whose folder holds a result (or, without --resume, an interrupted run) are skipped;
    the rest are returned a second time, still to do, each with its folder under --out."""
    paths, problems = find_inputs(options.inputs)
    outcomes = [InputOutcome(name=name, source=name, status="failed", message=problem) for name, problem in problems]
    if not paths and not outcomes:
        raise UserError("no inputs given")
    pending: list[InputOutcome] = []
    for path, name in zip(paths, unique_names(paths)):
        outcome = InputOutcome(name=name, source=str(path), folder=options.out / name)
        outcomes.append(outcome)
        if (outcome.folder / "report.json").exists() and not options.overwrite:  # type: ignore[operator]
            outcome.status, outcome.message = "skipped", f"{outcome.folder} already holds a result (use --overwrite to replace it)"
        elif (outcome.folder / STATE_FILE).exists() and not (options.resume or options.overwrite):  # type: ignore[operator]
            outcome.status = "skipped"
            outcome.message = f"{outcome.folder} holds an interrupted run (use --resume to continue it or --overwrite to restart)"
        else:
            pending.append(outcome)
    return outcomes, pending


class JobWorker:
    """Restores inputs of one job with its models loaded once: `restore` takes inputs batch
    after batch and keeps one Reconstructor per kind of batch (with / without ground truth), so
    the compiled step and BRGM's prior statistics are reused. `run_job` uses one for the whole
    job; each worker of a cluster job (`lbrgm_fast.ray`) keeps one for its batches."""

    def __init__(self, options: RunOptions, models: Models, step_options: StepOptions, profiler: Profiler, reporter: Reporter | None = None) -> None:
        self.options, self.models, self.step_options, self.profiler = options, models, step_options, profiler
        self.reporter = reporter or SilentReporter()
        self.resolution = models.generator.img_resolution
        self.shared_operator = None if options.task == "superres" else build_operator(options, self.resolution, None)
        observed = None if self.shared_operator is None else self.shared_operator.observed()
        self.mask = None if observed is None else observed.cpu()
        self.reconstructors: dict[bool, Reconstructor] = {}

    def restore(self, inputs: Sequence[InputOutcome], resume: bool | None = None) -> None:
        """Restore `inputs` (from `select_inputs`), filling in each one's outcome; a bad input
        fails alone. `resume` (default: --resume) continues inputs from their saved state."""
        options = self.options
        resume = options.resume if resume is None else resume
        prepared: list[PreparedInput] = []
        for outcome in inputs:
            assert outcome.folder is not None
            try:
                with self.profiler.phase("io"):
                    item = prepare_input(Path(outcome.source), options, self.resolution, outcome, self.mask)
                    if resume:
                        item.saved_state = _load_state(outcome.folder / STATE_FILE)
                        saved_rows = None if item.saved_state is None else item.saved_state.w_plus.shape[0]
                        if saved_rows not in (None, options.rows_per_input):
                            raise UserError(f"{outcome.folder} was interrupted with {saved_rows} restarts or samples; "
                                            "resume it with the same --restarts / --samples (or use --overwrite)")
                    prepared.append(item)
            except UserError as exc:
                outcome.status, outcome.message = "failed", str(exc)
        # Batches share one operator: group super-resolution inputs by factor, resumed ones by step.
        groups: dict[tuple[int | None, int], list[PreparedInput]] = {}
        for p in prepared:
            groups.setdefault((p.factor, 0 if p.saved_state is None else p.saved_state.step), []).append(p)
        for (factor, _), members in groups.items():
            operator = self.shared_operator or build_operator(options, self.resolution, factor)
            for start in range(0, len(members), options.batch_size):
                batch = members[start : start + options.batch_size]
                rec = self.reconstructor(all(p.ground_truth is not None for p in batch))
                _run_batch(batch, operator, options, rec, self.models, self.reporter, self.profiler)

    def reconstructor(self, has_gt: bool) -> Reconstructor:
        """The Reconstructor for batches with (`has_gt`) or without ground truth, made once."""
        if has_gt not in self.reconstructors:
            options = self.options
            self.reconstructors[has_gt] = Reconstructor(
                self.models.generator,
                self.models.perceptual,
                method=options.method,
                preset=options.preset,
                steps=options.steps,
                candidates=options.candidates,
                log_every=options.log_every,
                track_every=options.track_every,
                early_stop=options.early_stop,  # type: ignore[arg-type]
                monitor=self.models.monitor if has_gt else None,
                step_options=self.step_options,
                # One trace per worker: the first batch's (a second kind would overwrite it).
                profile_dir=options.profile if not self.reconstructors else None,
                engine=self.models.engine,
                profiler=self.profiler,
                deterministic=options.deterministic,
            )
        return self.reconstructors[has_gt]


def load_worker(options: RunOptions, device: torch.device, reporter: Reporter | None = None, models: Models | None = None) -> JobWorker:
    """A `JobWorker` for `options` on `device`: the step's settings, then the models (timed as
    the job's "load" phase, which report.json gives)."""
    reporter = reporter or SilentReporter()
    step_options = step_options_for(options, device, reporter)  # before the (slow) loading: a bad combination fails at once
    profiler = Profiler(device)
    with profiler.phase("load"):
        models = models or load_models(options, device, needs_monitor(options), reporter)
    for n in models.notes:
        reporter.note(n)
    return JobWorker(options, models, step_options, profiler, reporter)


def run_job(
    options: RunOptions,
    reporter: Reporter | None = None,
    models: Models | None = None,
) -> list[InputOutcome]:
    """Restore every input of `options`; returns one outcome per input (never raises for a bad input).

    Raises UserError only for problems that concern the whole job (no checkpoint, bad options).
    """
    check_options(options)
    device = resolve_device(options.device)
    reproducibility.check(options.deterministic, device)
    outcomes, pending = select_inputs(options)
    if not pending and len(outcomes) == sum(o.status == "failed" for o in outcomes):
        return outcomes  # nothing found to restore: no model loading
    worker = load_worker(options, device, reporter, models)
    with retained_host_memory(enabled=options.retain_host_memory and device.type == "cpu"):
        worker.restore(pending)
    return outcomes


def _precision_reason(options: RunOptions, device: torch.device) -> str:
    """Why the step ran in its precision, for report.json."""
    return f"--precision {options.precision}" if options.precision is not None else default_precision(device)[1]


def _run_batch(
    batch: list[PreparedInput],
    operator: Operator,
    options: RunOptions,
    rec: Reconstructor,
    models: Models,
    reporter: Reporter,
    profiler: Profiler,
) -> None:
    has_gt = all(p.ground_truth is not None for p in batch)
    folders = [p.outcome.folder for p in batch]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    resume = None
    if all(p.saved_state is not None for p in batch):
        resume = ReconstructionState.stack([p.saved_state for p in batch])  # type: ignore[misc]
        reporter.note(f"resuming {', '.join(p.outcome.name for p in batch)} at step {resume.step}")

    restarts = options.rows_per_input  # input i's restarts are rows i*R ... i*R + R-1

    def save_states(state: ReconstructionState) -> None:
        for i, f in enumerate(folders):
            state.slice(slice(i * restarts, (i + 1) * restarts)).save(f / STATE_FILE)  # type: ignore[operator]

    frames: list[list[torch.Tensor]] = [[] for _ in range(len(batch) * restarts)]

    def on_progress(progress: ProgressReport) -> None:
        reporter.progress(progress)
        if options.frames and progress.images is not None and progress.step % options.frames == 0:
            for i, img in enumerate(progress.images.cpu()):
                frames[i].append(((img.float() + 1) / 2).clamp(0, 1))

    observation = torch.stack([p.observation for p in batch])
    ground_truth = torch.stack([p.ground_truth for p in batch]) if has_gt else None  # type: ignore[misc]
    reporter.batch_started([p.outcome.name for p in batch], options.steps)
    started = time.perf_counter()
    try:
        result = rec.run(
            observation, operator, ground_truth=ground_truth, seed=options.seed, restarts=options.restarts, samples=options.samples, resume=resume,
            on_progress=on_progress, on_checkpoint=save_states, checkpoint_every=options.checkpoint_every,
        )
    except UserError as exc:
        for p in batch:
            p.outcome.status, p.outcome.message = "failed", str(exc)
        return
    except torch.OutOfMemoryError:
        for p in batch:
            p.outcome.status = "failed"
            rows = f"--batch-size {options.batch_size}" + (f" x {restarts} restarts / samples" if restarts > 1 else "")
            p.outcome.message = f"out of memory with {rows}; try a smaller batch size"
        return
    finally:
        reporter.batch_finished()
    settings = dataclasses.asdict(rec.settings_for(operator))
    extra = {
        **models.source,
        "operator": operator.describe(),
        "step": {**dataclasses.asdict(rec.step_options), "precision_reason": _precision_reason(options, rec.device)},
        "reproducibility": reproducibility.promise(rec.deterministic, rec.device),
        "forward_engine": models.engine_report or {"choice": "torch (the model itself)"},
        "batch_seconds": round(time.perf_counter() - started, 3),
        # Once per job, before the first batch: not part of any batch's timings.
        "model_load_seconds": round(profiler.seconds.get("load", 0.0), 3),
    }
    with profiler.phase("io"):
        for i, p in enumerate(batch):
            write_outputs(p, i, result, operator, options, settings, extra, models.monitor)
            kept_frames = frames[i * restarts + result.restart[i]]  # the kept restart's
            if kept_frames:
                _write_frames(p.outcome.folder, kept_frames)  # type: ignore[arg-type]
            if result.stopped[i]:
                p.outcome.status, p.outcome.message = "failed", result.stopped[i]  # type: ignore[assignment]


def _write_frames(folder: Path, frames: list[torch.Tensor]) -> None:
    from PIL import Image

    for k, frame in enumerate(frames):
        save_image(folder / "frames" / f"{k:04d}.png", frame)
    pictures = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for f in frames]
    atomic_write(folder / "progress.gif", lambda f: pictures[0].save(f, format="GIF", save_all=True, append_images=pictures[1:], duration=100, loop=0))


__all__ = ["InputOutcome", "JobWorker", "Models", "Reporter", "RunOptions", "SilentReporter", "check_options", "load_models", "load_worker", "run_job", "select_inputs"]
