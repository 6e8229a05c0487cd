"""`lbrgm-fast`: a thin command line over the library (typer + rich).

Each command maps its options to one options object and makes one library call. Messages and
progress go to stderr; stdout carries only results (`--json`). A user mistake is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lbrgm_fast.errors import UserError

stdout = Console()
RETAIN_HOST_MEMORY_HELP = (
    "CPU runs: keep freed memory in the process between steps instead of faulting fresh pages in "
    "every step (glibc; faster steps, the process holds its peak memory while it runs)."
)
# soft_wrap: a message stays one line (greppable), the terminal wraps it for display.
stderr = Console(stderr=True, soft_wrap=True)
PRECISION_HELP = ("fp32 | bf16 | fp16 for the optimisation step (default: bf16 where the GPU or CPU runs it natively — "
                  "avx512_bf16 or AMX on CPUs — else fp32).")
BATCH_SIZE_HELP = (
    "Images optimised together: the same results as one by one up to rounding (batched convolutions "
    "sum in another order; the tests bound the difference by 1e-2 on w+, z and the [0, 1] images)."
)


class _FlagsWithoutType:
    """Help that shows no type for flags (`--quiet`, `--compile/--no-compile`, `--help`):
    typer 0.29 formats help with its own copy of click, which gives every option without a
    metavar a type column, `<bool>` for flags included (click itself shows none)."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)  # type: ignore[misc] # the help option too
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class FlagCommand(_FlagsWithoutType, TyperCommand):
    pass


class FlagGroup(_FlagsWithoutType, TyperGroup):
    pass


app = typer.Typer(
    name="lbrgm-fast",
    help="Restore damaged images (missing regions, low resolution) by StyleGAN2 inversion with L-BRGM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=FlagGroup,
)


def say(style: str, label: str, message: str) -> None:
    """One line on stderr: `label` styled, then `message` as plain text (file names and error
    messages may hold [brackets], which rich would otherwise read as markup and drop)."""
    stderr.print(f"[{style}]{label}:[/] {escape(message)}", highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into one line on stderr and exit code 2; Ctrl-C into exit code 130."""
    try:
        yield
    except UserError as exc:
        say("bold red", "error", str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]: finished inputs are saved; `--resume` continues the others")
        raise typer.Exit(130) from None


class RichReporter:
    """Renders a job's progress: one bar per batch with loss terms, score, steps/s and ETA.

    When stderr is not a terminal (a log file, a pipeline), a live bar would print nothing
    until the end; a plain line is written at every tenth of the steps instead.
    """

    #: Plain-text progress lines per batch when stderr is not a terminal.
    PLAIN_LINES = 10
    #: Steps/s is shown once measured over at least this long: over a few fast steps it is noise.
    MIN_RATE_SECONDS = 1.0

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task = None
        self._label = ""
        self._steps = 0
        self._first: tuple[int, float] | None = None  # the first report's step and arrival time
        self._next_line = 0

    def note(self, message: str) -> None:
        if not self.quiet:
            say("cyan", "note", message)

    def batch_started(self, names: Sequence[str], steps: int) -> None:
        if self.quiet:
            return
        self._label = ", ".join(names) if len(names) <= 3 else f"{names[0]} +{len(names) - 1}"
        self._steps, self._first, self._next_line = steps, None, 0
        if not stderr.is_terminal:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[terms]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
        )
        self._task = self._progress.add_task(self._label, total=steps, terms="", rate="")
        self._progress.start()

    def progress(self, progress) -> None:  # noqa: ANN001 - lbrgm_fast.progress.ProgressReport
        if self.quiet or not self._label:
            return
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        terms = f"loss {mean(progress.terms['total']):.4g} pix {mean(progress.terms['pixel']):.4g}"
        if progress.score is not None:
            terms += f" score {mean(progress.score):.4g}"
        # Measured from the first report, which arrives after compilation: the steady rate.
        now = time.perf_counter()
        if self._first is None:
            self._first = (progress.step, now)
        first_step, first_time = self._first
        measured = now - first_time >= self.MIN_RATE_SECONDS and progress.step > first_step
        rate = f"{(progress.step - first_step) / (now - first_time):.2f} steps/s" if measured else ""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=progress.step, terms=terms, rate=rate)
        elif progress.step >= self._next_line or progress.step >= self._steps:
            stderr.print(escape(f"{self._label}: step {progress.step}/{self._steps} {terms} {rate}"), highlight=False)
            self._next_line = progress.step + max(self._steps // self.PLAIN_LINES, 1)

    def batch_finished(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task = None
        self._label = ""


class RichJobReporter:
    """Renders a cluster job's progress (`lbrgm_fast.ray`): one bar of inputs finished, with the
    failed count, the ETA and each worker's throughput; plain lines when stderr is no terminal."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task = None
        self._shown = -1  # inputs finished at the last plain line

    def note(self, message: str) -> None:
        if not self.quiet:
            say("cyan", "note", message)

    def update(self, progress) -> None:  # noqa: ANN001 - lbrgm_fast.progress.JobProgress
        if self.quiet:
            return
        finished = progress.done + progress.failed
        eta = "" if progress.eta_seconds is None else f", ETA {progress.eta_seconds / 60:.1f} min"
        rates = " ".join(
            f"w{w.index}:{'-' if w.images_per_hour is None else f'{w.images_per_hour:.0f}/h'}" for w in progress.workers
        )
        line = f"{finished}/{progress.total} images, {progress.failed} failed{eta} | {rates}"
        if not stderr.is_terminal:
            if finished != self._shown:
                stderr.print(escape(line), highlight=False)
                self._shown = finished
            return
        if self._progress is None:
            self._progress = Progress(TextColumn("[bold]images"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                      TimeElapsedColumn(), console=stderr)
            self._task = self._progress.add_task("images", total=progress.total, info="")
            self._progress.start()
        self._progress.update(self._task, completed=finished, info=f"{progress.failed} failed{eta} | {rates}")  # type: ignore[arg-type]

    def job_finished(self) -> None:
        # Also after Ctrl-C or an error: a live bar left running keeps the terminal's cursor hidden.
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task = None


def _gib(n: object) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, int) else "–"


def _summary_table(outcomes: list) -> Table:  # noqa: ANN001
    """One row per input; the optimisation time is its batch's (compilation shown apart)."""
    table = Table(title="lbrgm-fast run")
    for col in ("input", "status", "best step", "PSNR", "LPIPS", "optimise s", "folder / message"):
        table.add_column(col)
    peaks: dict[str, int] = {}
    for o in outcomes:
        m = o.metrics
        psnr = f"{m['psnr']:.2f}" if "psnr" in m else ""
        lp = f"{m['lpips_alex']:.4f}" if "lpips_alex" in m else ""
        seconds = o.timings.get("seconds", {})
        optimise = f"{seconds['optimise']:.1f}" if "optimise" in seconds else ""
        if seconds.get("compile"):
            optimise += f" (compile {seconds['compile']:.1f})"
        for kind in ("host", "device"):
            value = o.timings.get(f"peak_{kind}_memory_bytes")
            if isinstance(value, int):
                peaks[kind] = max(peaks.get(kind, 0), value)
        colour = {"done": "green", "failed": "red", "skipped": "yellow"}[o.status]
        table.add_row(o.name, f"[{colour}]{o.status}[/]", str(m.get("best_step", "")), psnr, lp, optimise, o.message or str(o.folder))
    if peaks:
        gpu = f", GPU {_gib(peaks['device'])}" if "device" in peaks else ""
        table.caption = f"peak memory: host {_gib(peaks.get('host'))}{gpu}; every phase's time is in each report.json"
    return table


#: `run`'s help panels, in the order `--help` shows them.
TASK, METHOD, EARLY_STOP, SPEED, FILES, CLUSTER = "Task", "Method", "Early stopping", "Speed", "Input / output", "Cluster"


@app.command(cls=FlagCommand)
def run(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders or globs. Each input gets its own folder under --out.")],
    # -- task
    task: Annotated[str, typer.Option(help="inpaint | superres | project.", rich_help_panel=TASK)] = "inpaint",
    mask: Annotated[Optional[str], typer.Option(help="Mask PNG the size of the image; its darkest value marks missing pixels.", rich_help_panel=TASK)] = None,
    mask_preset: Annotated[Optional[str], typer.Option(help="BRGM mask: right-half, left-half, eyes, bar, top-right, mouth, bottom-half.", rich_help_panel=TASK)] = None,
    invert_mask: Annotated[bool, typer.Option(help="Swap missing and kept pixels of --mask.", rich_help_panel=TASK)] = False,
    factor: Annotated[Optional[int], typer.Option(help="Super-resolution factor (default: from the input's size).", rich_help_panel=TASK)] = None,
    kernel: Annotated[str, typer.Option(help="Downsampling kernel: bicubic (BRGM), area, bicubic-aa.", rich_help_panel=TASK)] = "bicubic",
    degrade: Annotated[bool, typer.Option(help="Inputs are clean images: make the observation with the operator and use them as ground truth.", rich_help_panel=TASK)] = False,
    ground_truth: Annotated[Optional[str], typer.Option(help="Clean image (or folder of same-named images) for metrics and oracle early stopping.", rich_help_panel=TASK)] = None,
    align: Annotated[bool, typer.Option("--align", help="Inputs are photos (any size, any number of faces): align each face as FFHQ, restore it, paste it back into OUT/NAME/restored_full.png (needs the align extra).", rich_help_panel=TASK)] = False,
    face: Annotated[str, typer.Option(help="With --align: all | largest | INDEX (0 = leftmost face).", rich_help_panel=TASK)] = "all",
    # -- method
    method: Annotated[str, typer.Option(help="lbrgm | brgm | none.", rich_help_panel=METHOD)] = "lbrgm",
    preset: Annotated[Optional[str], typer.Option(help="lbrgm / none: authors (default, the published numbers) | paper (the paper's text); brgm: brgm-pytorch (default, BRGM's code) | lbrgm-paper (the copy the L-BRGM paper compared against).", rich_help_panel=METHOD)] = None,
    steps: Annotated[int, typer.Option(help="Adam steps.", rich_help_panel=METHOD)] = 2000,
    candidates: Annotated[int, typer.Option(help="N1: random z scored for the start.", rich_help_panel=METHOD)] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the candidates and the held-out pixels.", rich_help_panel=METHOD)] = 0,
    restarts: Annotated[int, typer.Option(help="Independent runs of each image (seeds seed … seed+N-1; BRGM: w_avg, then seeded perturbations of it), optimised together in one batch; the one the early-stopping score rates best is kept.", rich_help_panel=METHOD)] = 1,
    samples: Annotated[Optional[int], typer.Option(help="K >= 2 restarts, all kept: sample-k.png, mean.png and uncertainty.png / .npy (the per-pixel std: where the samples disagree); restored.png is the best-scored one. Not with --restarts.", rich_help_panel=METHOD)] = None,
    # -- early stopping
    early_stop: Annotated[str, typer.Option(help="auto (oracle with a ground truth, else objective) | oracle (LPIPS vs ground truth) | objective (lowest J) | holdout (held-out pixels) | none (last iterate).", rich_help_panel=EARLY_STOP)] = "auto",
    log_every: Annotated[int, typer.Option(help="Steps between progress updates and history entries.", rich_help_panel=EARLY_STOP)] = 10,
    track_every: Annotated[int, typer.Option(help="Steps between early-stopping scores (1: every step, as the authors; on the device, no waiting).", rich_help_panel=EARLY_STOP)] = 1,
    # -- speed
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.", rich_help_panel=SPEED)] = "auto",
    batch_size: Annotated[int, typer.Option(help=BATCH_SIZE_HELP, rich_help_panel=SPEED)] = 1,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Compile the optimisation step with torch.compile (default: on for runs of 500+ steps; the first compile takes minutes on a CPU).", rich_help_panel=SPEED)] = None,
    precision: Annotated[Optional[str], typer.Option(help=PRECISION_HELP, rich_help_panel=SPEED)] = None,
    cuda_graphs: Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay the step as a CUDA graph (default: on with CUDA).", rich_help_panel=SPEED)] = None,
    memory_budget: Annotated[float, typer.Option(help="Fraction (0, 1] of the activations the compiled step keeps for its backward pass; lower recomputes the rest (for large --batch-size).", rich_help_panel=SPEED)] = 1.0,
    forward_backend: Annotated[str, typer.Option(help="Candidate scoring and LPIPS monitoring on: auto | torch | onnxruntime | tensorrt (the last two need --engine).", rich_help_panel=SPEED)] = "auto",
    retain_host_memory: Annotated[bool, typer.Option(help=RETAIN_HOST_MEMORY_HELP, rich_help_panel=SPEED)] = True,
    profile: Annotated[Optional[Path], typer.Option(help="Write a torch profiler trace of a few steps into this folder.", rich_help_panel=SPEED)] = None,
    deterministic: Annotated[bool, typer.Option(help="Bitwise-identical results for a seed on any CPU and thread count, on one thread (slower). CPU only.", rich_help_panel=SPEED)] = False,
    # -- input / output
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="StyleGAN2 checkpoint (NVIDIA .pkl, rosinality .pt, lbrgm .safetensors).", rich_help_panel=FILES)] = None,
    engine: Annotated[Optional[str], typer.Option(help="Engine plan made by `lbrgm-fast build` (instead of --checkpoint).", rich_help_panel=FILES)] = None,
    vgg16: Annotated[Optional[str], typer.Option(help="torchvision VGG16 weights (vgg16-397923af.pth).", rich_help_panel=FILES)] = None,
    alexnet: Annotated[Optional[str], typer.Option(help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth).", rich_help_panel=FILES)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=FILES)] = Path("lbrgm-out"),
    overwrite: Annotated[bool, typer.Option(help="Replace existing results.", rich_help_panel=FILES)] = False,
    resume: Annotated[bool, typer.Option(help="Continue interrupted runs from their saved state.", rich_help_panel=FILES)] = False,
    strict: Annotated[bool, typer.Option(help="Wrongly sized or non-square images are errors instead of being cropped/resized.", rich_help_panel=FILES)] = False,
    frames: Annotated[int, typer.Option(help="Save a progress frame every N steps and a GIF (0: off).", rich_help_panel=FILES)] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.", rich_help_panel=FILES)] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.", rich_help_panel=FILES)] = False,
    # -- cluster
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run on a Ray cluster (needs the ray extra): local (start one here) | auto (the one `ray start` made) | ADDRESS. --out must be a folder every node sees.", metavar="WHERE", rich_help_panel=CLUSTER)] = None,
    workers: Annotated[Optional[int], typer.Option(help="With --ray: workers (default: one per GPU of the cluster, or per CPU without GPUs).", rich_help_panel=CLUSTER)] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option(help="With --ray: GPUs per worker (default 1 on a cluster with GPUs, else 0; 0.5 puts two on a GPU).", rich_help_panel=CLUSTER)] = None,
) -> None:
    """Restore images with L-BRGM (or BRGM, or no prior)."""
    from lbrgm_fast.io import json_text
    from lbrgm_fast.job import RunOptions, run_job

    given = locals()  # the parameters above: each one but --align, --face, --quiet, --json and the cluster's is a RunOptions field
    with user_errors():
        options = RunOptions(**{f.name: given[f.name] for f in fields(RunOptions) if f.name in given})
        if face != "all" and not align:
            raise UserError("--face chooses among the faces --align finds; add --align")
        if ray is None and (workers is not None or gpus_per_worker is not None):
            raise UserError("--workers and --gpus-per-worker are for --ray")
        reporter = RichReporter(quiet or json_out)
        if ray is not None:
            if align:
                raise UserError("--align runs on this machine only; align first (`lbrgm-fast align`), then run --ray on the crops")
            from lbrgm_fast.ray import run_ray_job

            outcomes = run_ray_job(options, ray, workers, gpus_per_worker, RichJobReporter(quiet or json_out))
        elif align:
            from lbrgm_fast.align.photos import parse_face_choice, run_aligned

            outcomes = run_aligned(options, parse_face_choice(face), reporter)
        else:
            outcomes = run_job(options, reporter)
    for o in outcomes:
        if o.status != "done":
            say("red", o.status, f"{o.name}: {o.message}")
        for n in o.notes:
            say("cyan", "note", f"{o.name}: {n}")
    if json_out:
        print(json_text([asdict(o) for o in outcomes]))
    elif not quiet:
        stderr.print(_summary_table(outcomes))
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(2)


def _names(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@app.command("eval", cls=FlagCommand)
def eval_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: cells/, results.csv, summary.md, summary.json, figure-<task>.png.")],
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="StyleGAN2 checkpoint.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="Engine plan made by `lbrgm-fast build` (instead of --checkpoint).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of clean images (the ground truths).")] = None,
    in_range: Annotated[Optional[int], typer.Option(help="Instead of --images: N ground truths made by the generator itself (seeded by --seed).")] = None,
    protocol: Annotated[str, typer.Option(help="paper1024 (Table 2) | paper256 (Table 1) | quick (a small grid).")] = "quick",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated inpaint:<mask preset> / superres:<factor> (default: the protocol's).")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated lbrgm, brgm, none, or method:preset, e.g. brgm:lbrgm-paper (default: the protocol's).")] = None,
    steps: Annotated[int, typer.Option(help="Adam steps.")] = 2000,
    candidates: Annotated[int, typer.Option(help="N1: random z scored for the start.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the candidates and --in-range.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images restored together.")] = 1,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Compile the step (default: on for 500+ steps).")] = None,
    precision: Annotated[Optional[str], typer.Option(help=PRECISION_HELP)] = None,
    vgg16: Annotated[Optional[str], typer.Option(help="torchvision VGG16 weights.")] = None,
    alexnet: Annotated[Optional[str], typer.Option(help="torchvision AlexNet weights.")] = None,
) -> None:
    """The papers' tables on your generator: restore, measure and compare (resumable)."""
    from lbrgm_fast import evaluate as ev
    from lbrgm_fast.loading import load_models
    from lbrgm_fast.runtime import resolve_device
    from lbrgm_fast.runtime.step import auto_step_options, emulation_note

    with user_errors():
        if (checkpoint is None) == (engine is None) or (images is None) == (in_range is None):
            raise UserError("give one of --checkpoint / --engine and one of --images / --in-range")
        if steps < 0 or candidates < 1 or batch_size < 1:
            raise UserError(f"--steps must be >= 0, --candidates and --batch-size >= 1; got {steps}, {candidates}, {batch_size}")
        # Names first, before the models load: a typo costs no download.
        protocol_methods = ev.protocol_named(protocol).methods
        ev.check_methods(protocol_methods if methods is None else _names(methods))  # type: ignore[arg-type]
        torch_device = resolve_device(device)
        step_options = auto_step_options(torch_device, steps=steps, compile=compile, precision=precision)  # type: ignore[arg-type]
        if (note := emulation_note(step_options, torch_device)) is not None:
            stderr.print(escape(note), highlight=False)
        models = load_models(checkpoint or engine, torch_device, vgg16=vgg16, alexnet=alexnet, monitor="required")  # type: ignore[arg-type]
        resolution = models.generator.img_resolution
        task_list, method_list = ev.resolve_grid(protocol, _names(tasks), _names(methods), resolution)
        failed: list[tuple[str, str]] = []
        if images is not None:
            targets, failed = ev.folder_targets(images, resolution)
        else:
            targets = ev.in_range_targets(models.generator, in_range, seed)  # type: ignore[arg-type]
        for name, message in failed:
            say("red", "failed", f"{name}: {message}")
        rows = ev.evaluate(models.generator, models.perceptual, models.monitor, targets, task_list, method_list, out,  # type: ignore[arg-type]
                           steps=steps, candidates=candidates, seed=seed, batch_size=batch_size, step_options=step_options,
                           engine=models.engine, on_note=lambda message: stderr.print(escape(message), highlight=False))
        rows += [ev.failed_row(name, task, method, message) for name, message in failed for task in task_list for method in method_list]
        _, curves = ev.write_results(rows, out)
        ev.write_figures(rows, targets, out, curves)
    stderr.print(f"wrote {out / 'summary.md'}")
    if any(r["status"] == "failed" for r in rows):
        raise typer.Exit(2)


@app.command(cls=FlagCommand)
def align(
    photos: Annotated[list[str], typer.Argument(help="Photos, folders or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: NAME-faceK.png and NAME-faceK.json (the transform) per face.")],
    size: Annotated[int, typer.Option(help="Side of the aligned crops in pixels.")] = 1024,
    face: Annotated[str, typer.Option(help="all | largest | INDEX (0 = leftmost face).")] = "all",
    json_out: Annotated[bool, typer.Option("--json", help="Print the faces written as JSON on stdout.")] = False,
) -> None:
    """Align the faces of photos as FFHQ's were (needs the align extra): one crop per face and
    its transform, which `lbrgm_fast.align.paste` undoes."""
    from lbrgm_fast.align.photos import align_photos, parse_face_choice

    with user_errors():
        staged, problems = align_photos(photos, out, size, parse_face_choice(face))
    for name, problem in problems:
        say("red", "failed", f"{name}: {problem}")
    if json_out:
        print(json.dumps([{"photo": str(s.photo), "face": s.index, "crop": str(s.crop), "transform": str(s.crop.with_suffix(".json"))} for s in staged], indent=2))
    else:
        for s in staged:
            stderr.print(escape(f"{s.photo}: face {s.index} -> {s.crop}"), highlight=False)
    if problems:
        raise typer.Exit(2)


@app.command(cls=FlagCommand)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("lbrgm-demo"),
    steps: Annotated[int, typer.Option(help="Adam steps per method.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the random generator, ground truth and candidates.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary (summary.json) on stdout.")] = False,
) -> None:
    """Offline demo: L-BRGM vs BRGM vs no prior on a small random generator (no downloads)."""
    from lbrgm_fast.demo import run_demo
    from lbrgm_fast.io import json_text

    with user_errors():
        summary = run_demo(out, steps=steps, seed=seed, reporter=RichReporter(quiet or json_out))
    if json_out:
        print(json_text(summary))
        return
    table = Table(title="lbrgm-fast demo (random 32 px generator, random VGG16: a smoke test, not a benchmark)")
    for col in ("method", "PSNR (all)", "PSNR (missing region)", "LPIPS(alex, random)", "seconds"):
        table.add_column(col)
    for name, m in summary["methods"].items():
        table.add_row(name, f"{m['psnr']:.2f}", f"{m['psnr_missing_region']:.2f}", f"{m['lpips_alex']:.4f}", f"{m['seconds']:.1f}")
    stderr.print(table)
    stderr.print(f"side by side: [bold]{summary['comparison']}[/]\nfiles: {out}/")


@app.command(cls=FlagCommand)
def info(
    path: Annotated[str, typer.Argument(help="A checkpoint or an engine plan.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Describe a checkpoint (format, shapes, precision, sha256) or an engine plan, and what this
    machine would run it with."""
    from lbrgm_fast.describe import describe, describe_machine

    with user_errors():
        description = {**describe(path), "this machine": describe_machine()}
    if json_out:
        print(json.dumps(description, indent=2))
        return
    table = Table(show_header=False, title=str(path))
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in description.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    stdout.print(table)


@app.command(cls=FlagCommand)
def convert(
    source: Annotated[str, typer.Argument(help="A supported checkpoint.")],
    output: Annotated[Path, typer.Argument(help="Where to write the lbrgm .safetensors checkpoint.")],
    network: Annotated[str, typer.Option(help="Which network of an NVIDIA pickle: G_ema or G.")] = "G_ema",
) -> None:
    """Convert a checkpoint to lbrgm's own format (safetensors + JSON config, no pickle)."""
    from lbrgm_fast.checkpoints import convert as convert_checkpoint

    with user_errors():
        if output.exists():
            raise UserError(f"{output} exists; remove it first")
        convert_checkpoint(source, output, network=network)
    stderr.print(f"wrote {output}")


@app.command(cls=FlagCommand)
def build(
    checkpoint: Annotated[str, typer.Argument(help="A supported StyleGAN2 checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The plan file to write, e.g. ffhq1024.plan.")],
    vgg16: Annotated[Optional[str], typer.Option(help="torchvision VGG16 weights (default: torch hub cache).")] = None,
    alexnet: Annotated[Optional[str], typer.Option(help="torchvision AlexNet weights for the LPIPS monitor.")] = None,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="Also build TensorRT engines for this GPU.")] = False,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT optimisation profiles.")] = 16,
    precision: Annotated[str, typer.Option(help="TensorRT engine precision: fp32 | fp16.")] = "fp32",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing plan file.")] = False,
) -> None:
    """Build an engine plan: generator, φ and monitor weights, ONNX graphs (and TensorRT engines) in one file."""
    from lbrgm_fast.build import build_plan

    with user_errors():
        if output.exists() and not overwrite:
            raise UserError(f"{output} exists (use --overwrite to replace it)")
        path = build_plan(checkpoint, output, vgg16=vgg16, alexnet=alexnet, tensorrt=tensorrt, max_batch=max_batch,
                          precision=precision, reporter=RichReporter(quiet=False))  # type: ignore[arg-type]
    stderr.print(f"wrote {path}")


@app.command(cls=FlagCommand)
def bench(
    shape: Annotated[str, typer.Option(help="Comma-separated: tiny32, ffhqlike64, ffhq256, ffhq1024.")] = "ffhqlike64",
    modes: Annotated[Optional[str], typer.Option(help="Comma-separated {eager|compiled}-{fp32|bf16|fp16}[-graphs][-tracked] (default per device; -tracked adds the per-step oracle: LPIPS(alex) and keeping the best iterate).")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1",
    steps: Annotated[int, typer.Option(help="Timed steps per measurement.")] = 10,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto (cuda when available).")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    profile: Annotated[Optional[Path], typer.Option(help="Also write a torch profiler trace of a few steps of each measurement under DIR/<shape>-batch<B>/<mode>/.", metavar="DIR")] = None,
    retain_host_memory: Annotated[bool, typer.Option(help=RETAIN_HOST_MEMORY_HELP + " Applies to every mode, the eager baseline too.")] = True,
) -> None:
    """Measure the optimisation step on this machine (eager float32 baseline in the same run)."""
    from lbrgm_fast.bench import BenchOptions, machine_description, render_table, run_bench
    from lbrgm_fast.io import json_text

    with user_errors():
        try:
            options = BenchOptions(
                shapes=tuple(s.strip() for s in shape.split(",") if s.strip()),
                modes=None if modes is None else tuple(m.strip() for m in modes.split(",") if m.strip()),
                batch_sizes=tuple(int(b) for b in batch_sizes.split(",")),
                steps=steps,
                device=device,
                profile_dir=profile,
                retain_host_memory=retain_host_memory,
            )
        except ValueError:
            raise UserError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
        on_result = None if json_out else (lambda r: stderr.print(f"{r['shape']} batch {r['batch']} {r['mode']}: {r['ms_per_step']:.1f} ms/step", highlight=False))
        results = run_bench(options, on_result=on_result)
    if json_out:
        print(json_text({"machine": machine_description(options.resolved_device()), "results": results}))
    else:
        stdout.print(render_table(results))


#: torch warnings that say nothing about the user's run, by the logger that emits them: the CUDA
#: build of torch on a machine without a GPU, and Dynamo skipping the profiler labels inside
#: torch's own Adam while compiling the step.
BENIGN_TORCH_WARNINGS = {
    "torch.utils.cpp_extension": "No CUDA runtime is found",
    "torch._dynamo.variables.ctx_manager": "Profiler record function",
    "torch._dynamo.variables.torch": "Profiler function",
}


class _BenignWarning(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_benign_torch_warnings() -> None:
    """Drop `BENIGN_TORCH_WARNINGS` from the command's stderr; every other warning still shows."""
    for name, prefix in BENIGN_TORCH_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _BenignWarning) for f in logger.filters):
            logger.addFilter(_BenignWarning(prefix))


def main() -> None:
    from lbrgm_fast.runtime.reproducibility import configure_process
    from lbrgm_fast.runtime.step import configure_compile_cache

    # Before the first matrix product: MKL reads its reproducibility setting once.
    configure_process()
    silence_benign_torch_warnings()
    # Before anything asks Inductor for its folder: compiled steps are then cached in a per-user
    # folder that outlives /tmp (torch's default), so later runs skip code generation.
    configure_compile_cache()
    app()


if __name__ == "__main__":
    sys.exit(main())
