"""`lbrgm-fast bench`: how fast the L-BRGM gradient loop runs on this machine.

For each model shape, batch size and step mode it times the real step — the `Objective` of
objective.py with L-BRGM's settings on the "eyes" inpainting operator, Adam from
`make_optimizer`, `loop.AdamStep` run by `make_step` — and reports ms per step, image-steps per second,
peak memory, achieved TFLOP/s and the speed-up over the eager float32 step measured in the same
run. Weights are random (seeded): speed does not depend on their values, and the package must
not depend on the test fixtures.

Modes are named `{eager|compiled}-{fp32|bf16|fp16}[-graphs][-tracked]`, e.g. "eager-fp32" (the
research code's numerics, the baseline), "compiled-bf16-graphs" (the GPU default). "-tracked"
adds what the loop does after every step with per-step oracle tracking (`track_every=1`, the
default): score the iterate's images by LPIPS(alex) against a ground truth and keep the best
iterate in a `ReconstructionState`, on the device; compare "eager-fp32,eager-fp32-tracked".

Timing: every mode of a shape and batch size is built and warmed up first, then the modes
are timed in turn, round after round, so that a busy spell on a shared machine slows them
alike; on the CPU a round is one step per mode, on CUDA an unsynchronised block of steps, as in
the real loop; the median over the rounds is reported. Steps that compile or capture are
excluded and reported as `compile_seconds` (each compiled mode compiles its own step; Inductor's
cache spares a later mode code generation that an earlier one did). FLOPs come from `torch.utils.flop_counter`
over one eager forward and backward pass (convolutions and matrix products; Adam's element-wise
update is not counted).

Host memory (CPU): with `retain_host_memory` (the CLI's default, as for `lbrgm-fast run`) every
mode, the eager baseline included, runs with freed memory kept in the process
(`runtime.host_memory`); the research code runs with glibc's defaults, so compare against it
with `--no-retain-host-memory` in a separate process (bench/bench_host_memory.py does both).
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import UserError
from lbrgm_fast.methods import method_settings
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Inpainting
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.state import ReconstructionState
from lbrgm_fast.loop import AdamStep
from lbrgm_fast.objective import TOTAL, Objective, generator_to_255
from lbrgm_fast.runtime.devices import cpu_features, resolve_device
from lbrgm_fast.runtime.host_memory import (
    release_freed_host_memory,
    retained_host_memory,
)
from lbrgm_fast.runtime.step import (
    PRECISIONS,
    StepOptions,
    StepProfile,
    make_optimizer,
    make_step,
    prepare_networks,
)

#: Benchmark model shapes. tiny32 and ffhqlike64 have the test fixtures' shapes; ffhq256 is
#: stylegan2-ada's 256 px config (paper256: channel_base 16384); ffhq1024 is config-f. The
#: last two keep stylegan2-ada's PyTorch defaults (fp16 on the 4 highest resolutions, clamp
#: 256), which only the fp16 modes use.
SHAPES: dict[str, GeneratorConfig] = {
    "tiny32": GeneratorConfig(z_dim=32, w_dim=32, img_resolution=32, channel_base=512, channel_max=64),
    "ffhqlike64": GeneratorConfig(
        z_dim=64, w_dim=64, img_resolution=64, channel_base=2048, channel_max=128, num_fp16_res=4, conv_clamp=256
    ),
    "ffhq256": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256, channel_base=16384, num_fp16_res=4, conv_clamp=256),
    "ffhq1024": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=1024, channel_base=32768, num_fp16_res=4, conv_clamp=256),
}
BASELINE_MODE = "eager-fp32"
#: Mode suffix: every step followed by the oracle's per-step tracking (LPIPS(alex) + keep the best).
TRACKED = "-tracked"
#: Timing rounds on CUDA (each a block of `steps` unsynchronised steps per mode).
CUDA_ROUNDS = 3
#: Steps recorded per mode when profiling (after the timed rounds, so that the profiler's
#: overhead never reaches the timings).
PROFILE_STEPS = 3


@dataclass(frozen=True)
class BenchOptions:
    """What `run_bench` measures.

    Attributes:
        shapes: Model shapes, keys of `SHAPES`.
        modes: Step modes (see the module docstring); None: `default_modes(device)`.
        batch_sizes: Images per step.
        steps: Timed steps per shape, mode and batch size (after the warm-up steps); on CUDA
            each of the `CUDA_ROUNDS` rounds runs this many.
        device: "cpu", "cuda", or "auto" / None for CUDA when available.
        vgg_resolution: Side length φ resizes to (256 as in the method).
        seed: Seed of the random weights, observations and starting latents.
        profile_dir: Where to write a torch profiler trace of `PROFILE_STEPS` steady-state
            steps of every measurement, after its timing (one folder per shape, batch and
            mode: trace.json and ops.txt, see `StepProfile`); None: no profiling.
        retain_host_memory: CPU only: keep freed host memory in the process while measuring
            (see the module docstring); off by default in the library, on in the CLI.
    """

    shapes: tuple[str, ...] = ("ffhqlike64",)
    modes: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = (1,)
    steps: int = 10
    device: str | None = None
    vgg_resolution: int = 256
    seed: int = 0
    profile_dir: Path | None = None
    retain_host_memory: bool = False

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


def default_modes(device: torch.device) -> tuple[str, ...]:
    """The baseline and the compiled modes worth comparing on `device`.

    On a CPU bf16 is included only where it is native (avx512_bf16 / AMX, as `run` then picks
    it): elsewhere its convolutions are emulated and many times slower than float32; ask for it
    by name.
    """
    if device.type == "cuda":
        return (BASELINE_MODE, "compiled-fp32", "compiled-bf16", "compiled-bf16-graphs")
    if cpu_features().native_bf16:
        return (BASELINE_MODE, "compiled-fp32", "compiled-bf16")
    return (BASELINE_MODE, "compiled-fp32")


def parse_mode(mode: str) -> StepOptions:
    """'compiled-bf16-graphs' -> StepOptions(compile=True, precision='bf16', cuda_graphs=True)."""
    parts = mode.removesuffix(TRACKED).split("-")
    graphs = parts[-1] == "graphs"
    if graphs:
        parts = parts[:-1]
    if len(parts) != 2 or parts[0] not in ("eager", "compiled") or parts[1] not in PRECISIONS:
        raise UserError(f"unknown mode {mode!r}; expected {{eager|compiled}}-{{{'|'.join(PRECISIONS)}}}[-graphs][{TRACKED}]")
    return StepOptions(compile=parts[0] == "compiled", precision=parts[1], cuda_graphs=graphs)  # type: ignore[arg-type]


def _check(options: BenchOptions, device: torch.device, modes: tuple[str, ...]) -> None:
    unknown = [s for s in options.shapes if s not in SHAPES]
    if unknown or not options.shapes:
        given = f"unknown shape(s) {', '.join(unknown)}" if unknown else "no shape given"
        raise UserError(f"{given}; choose from {', '.join(SHAPES)}")
    if not modes:
        raise UserError("no mode given; name one or more of {eager|compiled}-{fp32|bf16|fp16}[-graphs], e.g. eager-fp32,compiled-fp32")
    if not options.batch_sizes or min(options.batch_sizes) < 1 or options.steps < 1:
        raise UserError(f"--batch-sizes and --steps must be >= 1, got batch sizes {list(options.batch_sizes)} and {options.steps} steps")
    for mode in modes:
        parse_mode(mode).check(device)


_Models = tuple[Generator, VGG16Features, Inpainting, LpipsAlex]


@dataclass
class _Problem:
    """One shape at one batch size: what every mode builds its objective from, and the starting
    latents every mode copies."""

    models: _Models
    observation: torch.Tensor  # y [B, 3, h, w] in [0, 255], missing pixels 0
    w0: torch.Tensor
    z0: torch.Tensor
    flops: int
    truth: torch.Tensor  # the observation's clean image [B, 3, H, W] in [-1, 1], for "-tracked"

    @property
    def monitor(self) -> LpipsAlex:
        return self.models[3]

    def objective(self, options: StepOptions, device: torch.device) -> Objective:
        """A new objective on copies of the networks, prepared for `options` before anything runs
        them, as a run prepares them: φ(y) is then computed in the layout the step will run in
        (channels-last features when compiled on the CPU), so the step is the one a run takes."""
        G, vgg, operator, _ = self.models
        G, vgg = copy.deepcopy(G), copy.deepcopy(vgg)
        prepare_networks([G, vgg], options, device)
        return Objective(G, operator, vgg, method_settings("lbrgm"), self.observation, None)


def _build_models(config: GeneratorConfig, vgg_resolution: int, seed: int, device: torch.device) -> _Models:
    torch.manual_seed(seed)  # Generator() draws its random weights from the global generator
    G = Generator(config).eval().requires_grad_(False).to(device)
    vgg = VGG16Features.random(seed, vgg_resolution).to(device)
    return G, vgg, Inpainting.from_preset("eyes", config.img_resolution).to(device), LpipsAlex.random(seed).to(device)


def _count_flops(objective: Objective, w0: torch.Tensor, z0: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass of the objective (eager float32)."""
    w, z = w0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        terms, _ = objective(w, z)
        terms[TOTAL].sum().backward()
    return counter.get_total_flops()


def _problem(models: _Models, batch: int, seed: int) -> _Problem:
    G, vgg, operator, _ = models
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z_obs = torch.randn(batch, G.z_dim, generator=gen).to(device)
    z0 = torch.randn(batch, G.z_dim, generator=gen).to(device)
    with torch.no_grad():
        truth = G.synthesis(G.mapping(z_obs))
        observation = operator(generator_to_255(truth))
        w0 = G.mapping(z0)
    objective = Objective(G, operator, vgg, method_settings("lbrgm"), observation, None)
    return _Problem(models, observation, w0, z0, _count_flops(objective, w0, z0), truth)


def _tracked(step: Callable[[], tuple[torch.Tensor, ...]], problem: _Problem, w: torch.Tensor, z: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
    """`step` followed by the loop's per-step oracle tracking: LPIPS(alex) of the iterate's
    images against the ground truth, and the best iterate kept on the device (no host read)."""
    state = ReconstructionState.start(w, z)

    def tracked() -> tuple[torch.Tensor, ...]:
        terms, images, w_k, z_k = step()
        with torch.no_grad():
            state.keep_best(state.step, problem.monitor(images.float(), problem.truth), terms[TOTAL], w_k, z_k)
        state.step += 1
        return terms, images, w_k, z_k

    return tracked


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _process_status_bytes(field: str) -> int | None:
    """A kB figure of /proc/self/status (Linux), in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_memory(device: torch.device) -> int | None:
    """Peak device memory on CUDA; peak resident set size of the process on the CPU (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _process_status_bytes("VmHWM")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_block(step: Callable[[], object], steps: int, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over a block of `steps` unsynchronised steps.

    The process CPU time is what the steps cost this process's threads, which waiting for a
    core on a shared machine does not inflate (on CUDA it is the host's share only).
    """
    _sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps


@dataclass
class _PreparedMode:
    """One mode's step, built and warmed up, ready to be timed alongside the others."""

    mode: str
    options: StepOptions
    step: Callable[[], tuple[torch.Tensor, ...]]
    warmup_seconds: float
    peak_memory_bytes: int | None
    samples: list[tuple[float, float]]


def _held_memory(device: torch.device) -> int:
    """Memory held now: device memory on CUDA; on the CPU (Linux; else 0) the resident set size
    once the allocator has handed back the memory it keeps free (retain_host_memory), which no
    mode holds."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    release_freed_host_memory()
    return _process_status_bytes("VmRSS") or 0


def _prepare(problem: _Problem, mode: str, device: torch.device, baseline_memory: int) -> _PreparedMode:
    """Build a new optimiser and step for `mode` and warm it up (compiling / capturing).

    The peak memory is that of the warm-up, less what the modes prepared before this one still
    hold (memory held now beyond `baseline_memory`), so each mode's figure is what it would
    need on its own. Each compiled mode keeps its own compiled code, which preparing the next
    mode leaves in place.
    """
    options = parse_mode(mode)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    held_by_others = _held_memory(device) - baseline_memory
    _reset_peak_memory(device)
    # Each mode its own networks, prepared as a run in that mode prepares them (weight layout),
    # so that one mode's preparation never changes another's timing, the baseline's least.
    objective = problem.objective(options, device)
    w = problem.w0.clone().requires_grad_(True)
    z = problem.z0.clone().requires_grad_(True)
    optimizer = make_optimizer([w, z], objective.settings.lr, objective.settings.betas, options, device)
    step = make_step(AdamStep(optimizer, w, z, options.precision), objective, options)
    if mode.endswith(TRACKED):
        step = _tracked(step, problem, w, z)
    _sync(device)
    start = time.perf_counter()
    # One more than the compile / capture calls, so that first-touch costs (allocator,
    # oneDNN primitives, cuDNN search) stay out of the timed steps in every mode.
    for _ in range(options.warmup_calls + 1):
        step()
    _sync(device)
    warmup_seconds = time.perf_counter() - start
    peak = _peak_memory(device)
    return _PreparedMode(mode, options, step, warmup_seconds, None if peak is None else peak - held_by_others, [])


def _result(prepared: _PreparedMode, problem: _Problem, device: torch.device) -> dict[str, object]:
    """The figures of one mode from its timed samples (medians over the rounds)."""
    seconds = statistics.median(wall for wall, _ in prepared.samples)
    cpu_seconds = statistics.median(cpu for _, cpu in prepared.samples)
    calls = prepared.options.warmup_calls
    batch = problem.w0.shape[0]
    return {
        "mode": prepared.mode,
        "ms_per_step": seconds * 1e3,
        "cpu_ms_per_step": None if device.type == "cuda" else cpu_seconds * 1e3,
        "ms_per_image_step": seconds * 1e3 / batch,
        "image_steps_per_s": batch / seconds,
        "peak_memory_bytes": prepared.peak_memory_bytes,
        "tflops": problem.flops / seconds / 1e12,
        # What compiling / capturing cost beyond the steps it ran.
        "compile_seconds": max(prepared.warmup_seconds - (calls + 1) * seconds, 0.0) if calls else 0.0,
        # A sanity check read after timing: a mode whose loss overflowed is not a fast mode.
        "loss_finite": bool(torch.isfinite(prepared.step()[0][TOTAL]).all()),
    }


def _measure_modes(
    problem: _Problem, modes: tuple[str, ...], steps: int, device: torch.device, profile_dir: Path | None
) -> list[dict[str, object]]:
    """Prepare every mode, then time them in turn, round after round.

    Interleaving is what makes the speed-ups trustworthy on a shared machine: a slow spell
    (another job, a thermal or frequency change) lands on every mode alike instead of on
    whichever ran during it. On the CPU each round times one step of each mode (`steps`
    rounds); on CUDA one unsynchronised block of `steps` steps of each mode, as the real loop
    runs them (CUDA_ROUNDS rounds). Reported: the median over the rounds. With `profile_dir`,
    each mode's steady state is then profiled into `profile_dir/<mode>`.
    """
    baseline_memory = _held_memory(device)
    prepared: list[_PreparedMode] = []
    for mode in modes:
        prepared.append(_prepare(problem, mode, device, baseline_memory))
    rounds, block = (CUDA_ROUNDS, steps) if device.type == "cuda" else (steps, 1)
    # One untimed round: preparing the later modes handed the earlier ones' freed memory back
    # (`_held_memory`), and faulting it in again belongs in no timed round.
    for p in prepared:
        _time_block(p.step, 1, device)
    for _ in range(rounds):
        for p in prepared:
            p.samples.append(_time_block(p.step, block, device))
    results = [_result(p, problem, device) for p in prepared]
    if profile_dir is not None:
        for p in prepared:
            profiled = StepProfile(p.step, PROFILE_STEPS, profile_dir / p.mode)
            try:
                for _ in range(PROFILE_STEPS):
                    profiled()
                _sync(device)
            finally:
                profiled.close()
    return results


def run_bench(options: BenchOptions, on_result: Callable[[dict[str, object]], None] | None = None) -> list[dict[str, object]]:
    """Measure every shape x batch size x mode; returns one dict per measurement.

    Each dict has: shape, batch, mode, device, threads (CPU threads, None on CUDA), steps,
    ms_per_step, cpu_ms_per_step (CPU only: process CPU time, robust to a busy machine),
    ms_per_image_step, image_steps_per_s, peak_memory_bytes (device memory on CUDA, process
    RSS on the CPU; None where unknown), gflop_per_step, tflops, speedup_vs_eager (wall time
    vs "eager-fp32" at the same shape and batch; None if that was not measured),
    compile_seconds, loss_finite (the loss after the timed steps is finite), and
    host_memory_retained (freed host memory was kept in the process; always False on CUDA).
    `on_result` is called with each dict as soon as its shape and batch size are measured.
    """
    device = options.resolved_device()
    modes = default_modes(device) if options.modes is None else options.modes
    _check(options, device, modes)
    # The baseline first, so every later result can carry its speed-up.
    modes = tuple(sorted(modes, key=lambda m: m != BASELINE_MODE))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN pick the fastest algorithms
    results: list[dict[str, object]] = []
    with retained_host_memory(enabled=options.retain_host_memory and device.type == "cpu") as retained:
        for shape in options.shapes:
            models = _build_models(SHAPES[shape], options.vgg_resolution, options.seed, device)
            for batch in options.batch_sizes:
                problem = _problem(models, batch, options.seed)
                baseline: float | None = None
                profile_dir = None if options.profile_dir is None else options.profile_dir / f"{shape}-batch{batch}"
                for measured in _measure_modes(problem, modes, options.steps, device, profile_dir):
                    result: dict[str, object] = {
                        "shape": shape,
                        "batch": batch,
                        "device": device.type,
                        "threads": None if device.type == "cuda" else torch.get_num_threads(),
                        "steps": options.steps,
                        "gflop_per_step": problem.flops / 1e9,
                        **measured,
                        "host_memory_retained": retained,
                    }
                    if measured["mode"] == BASELINE_MODE:
                        baseline = float(result["ms_per_step"])  # type: ignore[arg-type]
                    result["speedup_vs_eager"] = None if baseline is None else baseline / float(result["ms_per_step"])  # type: ignore[arg-type]
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results


def _fmt(value: object, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def render_table(results: list[dict[str, object]]) -> Table:
    """A rich table of `run_bench` results, one row per shape / batch / mode."""
    retained = any(r.get("host_memory_retained") for r in results)
    table = Table(title="L-BRGM step", caption="freed host memory kept in the process (every mode)" if retained else None)
    for name in ("shape", "batch", "mode", "ms/step", "image-steps/s", "peak memory", "TFLOP/s", "vs eager", "compile s"):
        table.add_column(name, justify="left" if name in ("shape", "mode") else "right")
    for r in results:
        peak = r["peak_memory_bytes"]
        table.add_row(
            str(r["shape"]),
            str(r["batch"]),
            str(r["mode"]),
            _fmt(r["ms_per_step"], ".1f"),
            _fmt(r["image_steps_per_s"], ".2f"),
            "–" if peak is None else f"{int(peak) / 2**30:.2f} GiB",  # type: ignore[call-overload]
            _fmt(r["tflops"], ".3f"),
            "–" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x",
            _fmt(r["compile_seconds"], ".1f"),
        )
    return table


def machine_description(device: torch.device) -> str:
    """One line naming the processor or GPU (a CPU with the kernels torch runs and whether it
    has native bf16), the torch version and the CPU threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu = cpu_features()
        units = [unit for unit, has in (("avx512_bf16", cpu.avx512_bf16), ("AMX", cpu.amx)) if has]
        name = f"{_cpu_name()} ({cpu.capability}; native bf16: {', '.join(units) if units else 'no'})"
    return f"{name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads of {os.cpu_count()}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
