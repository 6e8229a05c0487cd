"""One optimisation step of the reconstruction loop, built once per run.

A step evaluates the objective at the current iterate, back-propagates and lets Adam update
the latents, returning what the loop needs to log and to keep the best iterate: the loss terms
and images *of the iterate before the update*, and a copy of that iterate. Nothing in a step
reads a value back to the host.

How a step runs is chosen by `StepOptions`; `auto_step_options` picks per device:

* **eager float32** (the default `StepOptions()`): the research code's numerics, the reference
  every other mode is tested against.
* **compiled**: the whole step function (zero_grad, G → A → φ → loss, backward, Adam update)
  goes through `torch.compile` with static shapes (the batch never changes within a run).
  Dynamo splits it at `backward()` into a forward graph, whose backward AOTAutograd compiles
  ahead of time, and an Adam-update graph. Network weights are frozen, so neither graph
  computes a weight gradient; the modulated convolutions use the non-fused form.
* **precision** "bf16" / "fp16": autocast around the forward. The convolutions and matrix
  products run in low precision; the generator's style affines, demodulation coefficients and
  mapping network, φ's channel normalisation, the loss reductions and Adam stay float32
  (explicit fp32 islands in model.py / perceptual.py). Which synthesis blocks may run in low
  precision is set here (`low_precision_resolutions`): all of them for bf16, whose range is
  float32's; for fp16 only the checkpoint's `num_fp16_res` blocks, whose `conv_clamp` keeps
  activations in range, as NVIDIA runs them. fp16 gradients would underflow (a pixel's share
  of the loss is ~1e-8), so the fp16 step scales the loss by `FP16_LOSS_SCALE` and divides
  the gradients back before Adam: a static scale, because a dynamic one needs a host read.
* **CUDA graphs** (CUDA only): the step — compiled or not — is captured once into a CUDA graph
  after a few warm-up steps on a side stream, then replayed: one launch per step. Adam must be
  `capturable` (`make_optimizer` does this).

Compilation is cached on disk by torch (Inductor's FX-graph cache and AOTAutograd's cache, both
on by default) under `$TORCHINDUCTOR_CACHE_DIR`; `configure_compile_cache` (called by the
`lbrgm-fast` command and the bench scripts at start; a library caller can call it too) points
that at a per-user folder that survives reboots unless the variable is already set. A second
run of the same shapes then skips code generation; Dynamo's tracing (seconds to tens of
seconds) is not cached by torch. Within a process, a step built over the same latents and Adam, refilled in place
for the next batch (`refill_latents`, then `make_step(..., fresh=False)`), is not traced at all:
the Reconstructor does this for every batch after its first.

The first calls of a compiled or captured step compile / capture it (and run a real step each);
their time goes to the profiler's "compile" phase so it is reported apart from the loop.

Around `make_step`: `prepare_networks` stores the weights in the step's layout once,
`make_optimizer` builds the Adam it needs, `load_optimizer_state` resumes one without losing its
settings, `refill_latents` restarts one in place for the next batch (so that the compiled step is
reused, not traced again), `StepProfile` records a torch profiler trace of a few steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import UserError
from lbrgm_fast.model import Generator
from lbrgm_fast.runtime.devices import cpu_features
from lbrgm_fast.runtime.profiler import Profiler

StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Static loss scale of the fp16 step. Measured on ffhqlike64 (float32, random φ): the gradients
#: reaching the fp16 blocks' outputs have median |g| 1e-4 at 64 px, about fp16's smallest normal
#: number (6e-5), and at most 0.3. Times 4096 the median sits well inside fp16's normal range and
#: the largest value 50x below its overflow (65504); at 1024 px each pixel's share of the loss
#: means is smaller still, so the scale only matters more there.
FP16_LOSS_SCALE = 2.0**12
#: Warm-up steps run (for real) on a side stream before a CUDA graph is captured: enough for
#: Dynamo's recompile once Adam's state exists, cuDNN's algorithm search and cuBLAS workspaces.
CUDA_GRAPH_WARMUP = 3
#: Calls of a compiled step that may (re)compile: the first traces with Adam's state still
#: empty, the second retraces once the state exists.
COMPILE_WARMUP = 2


@dataclass(frozen=True)
class StepOptions:
    """How the step runs. The defaults reproduce the research code (eager float32).

    Attributes:
        compile: Compile the whole step (forward, backward, Adam update) with torch.compile.
        precision: "fp32", or autocast "bf16"/"fp16" for the networks (loss reductions,
            normalisations and the Adam state stay float32).
        cuda_graphs: Capture the step into a CUDA graph and replay it (CUDA only).
        memory_budget: Fraction of the activations the compiled step may keep for the
            backward pass (1: all, the fastest); lower values make AOTAutograd recompute the
            cheapest activations instead (activation checkpointing), for large batches.
            Needs `compile`. Measured on the CPU (tiny32, batch 16, φ at 64 px): 0.2 cut the
            step's peak allocation from 163 MB to 113 MB (eager: 198 MB).
    """

    compile: bool = False
    precision: Precision = "fp32"
    cuda_graphs: bool = False
    memory_budget: float = 1.0

    def check(self, device: torch.device) -> None:
        """Raise UserError when these options cannot run on `device`."""
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.cuda_graphs and device.type != "cuda":
            raise UserError(f"CUDA graphs need a CUDA device, not {device.type}")
        if not 0.0 < self.memory_budget <= 1.0:
            raise UserError(f"memory budget must be in (0, 1], got {self.memory_budget} (--memory-budget)")
        if self.memory_budget < 1.0 and not self.compile:
            raise UserError("an activation memory budget below 1 needs the compiled step (--memory-budget < 1 needs --compile)")

    @property
    def warmup_calls(self) -> int:
        """Calls before the step reaches its steady state (compiled / captured)."""
        if self.cuda_graphs:
            return CUDA_GRAPH_WARMUP + 1  # the last of them captures the graph and replays it
        return COMPILE_WARMUP if self.compile else 0


#: Runs shorter than this are not compiled by default: compiling costs minutes on a first run
#: (CPU: ~2 min at 64-256 px, measured; cached afterwards) and saves a fraction of a step.
MIN_STEPS_TO_COMPILE = 500


def default_precision(device: torch.device | str) -> tuple[Precision, str]:
    """The step's precision when none is asked for on `device`, and why (for notes and reports).

    bf16 wherever the hardware runs it natively: CUDA GPUs that support it, and CPUs with
    avx512_bf16 or AMX, where oneDNN's bf16 convolutions ran 1.3-3x faster than float32
    (bench/RESULTS.md). Elsewhere float32: a CPU without them emulates bf16 (25x slower on an
    AVX2 CPU).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "bf16: this GPU supports it"
        return "fp32", "fp32: this GPU has no bf16"
    cpu = cpu_features()
    if cpu.native_bf16:
        units = " and ".join(name for name, has in (("avx512_bf16", cpu.avx512_bf16), ("AMX", cpu.amx)) if has)
        return "bf16", f"bf16: this CPU has {units} (native bf16)"
    return "fp32", f"fp32: this CPU ({cpu.capability}) has no avx512_bf16 or AMX, so bf16 would be emulated"


def auto_step_options(
    device: torch.device | str,
    *,
    steps: int | None = None,
    compile: bool | None = None,
    precision: Precision | None = None,
    cuda_graphs: bool | None = None,
    memory_budget: float = 1.0,
) -> StepOptions:
    """Sensible options for `device` and a run of `steps` steps; an argument that is not None
    overrides its default.

    Precision: `default_precision` (bf16 where the GPU or CPU runs it natively, else fp32).
    CUDA graphs on CUDA. Both devices compile unless the run is known to be shorter than
    `MIN_STEPS_TO_COMPILE` (a demo, a test): compiling pays off only over many steps
    (bench/RESULTS.md).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if precision is None:
        precision = default_precision(device)[0]
    if compile is None:
        compile = steps is None or steps >= MIN_STEPS_TO_COMPILE
    options = StepOptions(
        compile=compile,
        precision=precision,
        cuda_graphs=cuda if cuda_graphs is None else cuda_graphs,
        memory_budget=memory_budget,
    )
    options.check(device)
    return options


def prepare_networks(networks: Iterable[torch.nn.Module | None], options: StepOptions, device: torch.device | str) -> None:
    """Store the networks' 4-D weights, once, in the layout the step's convolutions run in.

    The compiled CPU step runs every convolution channels-last (Inductor's layout choice for
    oneDNN), so weights stored NCHW are converted on every step, forward and backward; stored
    channels-last they are used as they are. Measured on the 2-core development machine
    (1 thread, compiled float32, medians of 7 interleaved steps): 1150 -> 1076 ms per step at
    ffhqlike64, 2291 -> 2176 ms at ffhq256. Only the layout changes, not a value; the convolutions
    may round differently (~1e-7). Eager and CUDA steps keep the weights as loaded: on CUDA
    channels-last weights made no difference (H200, 1024 px, compiled bf16 + CUDA graphs, with
    the convolution forms of the filters: 9.31 / 9.3 ms at batch 1, 61.4 / 61.5 ms at batch 8).
    Call it before anything runs the networks, so that every phase of a run sees one layout.
    """
    if options.compile and torch.device(device).type == "cpu":
        for network in networks:
            if network is not None:
                network.to(memory_format=torch.channels_last)


class StepObjective(Protocol):
    """What a step needs of the objective (reconstruct.Objective)."""

    generator: Generator

    def __call__(self, w_plus: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]: ...


def make_optimizer(
    params: Iterable[torch.Tensor],
    lr: float,
    betas: tuple[float, float],
    options: StepOptions,
    device: torch.device | str,
) -> torch.optim.Adam:
    """Adam as the step for `options` needs it, with the learning rate held in a tensor.

    A tensor learning rate is part of the compiled / captured graph's inputs rather than a
    constant baked into it, so changing it needs no recompilation or recapture. On CUDA, Adam
    is `capturable` (its step counter lives on the device: no host read per step, and CUDA
    graphs can capture it). On the CPU the per-tensor implementation is used: it is the one
    that accepts a tensor learning rate without `capturable`, which the CPU lacks.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), betas=betas, capturable=True, foreach=True)
    return torch.optim.Adam(params, lr=torch.tensor(lr), betas=betas, foreach=False)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Resume `optimizer` from `saved` (a state_dict of an Adam over the same latents), keeping
    `optimizer`'s own settings.

    torch's `load_state_dict` also replaces the param groups with the saved ones, so a run saved
    with a float learning rate or without `capturable` would resume without them, and a CUDA
    graph could not capture it. Here only the moments and step counts are taken from `saved`;
    each step count goes where this optimiser keeps it (on the device when capturable).
    """
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(saved["param_groups"]):
        raise ValueError("the saved optimiser state has a different number of parameter groups")
    groups = [
        {**old, **{k: v for k, v in new.items() if k != "params"}}
        for new, old in zip(current, saved["param_groups"], strict=True)
    ]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})


def low_precision_resolutions(config: GeneratorConfig, precision: Precision) -> frozenset[int]:
    """Synthesis blocks allowed to run under the step's autocast (see the module docstring)."""
    if precision == "bf16":
        return frozenset(config.block_resolutions)
    return frozenset(config.fp16_resolutions)


def configure_compile_cache(cache_dir: str | Path | None = None) -> Path:
    """Point torch's on-disk compilation caches at `cache_dir`, or keep `$TORCHINDUCTOR_CACHE_DIR`,
    or use `$XDG_CACHE_HOME/lbrgm-fast/torchinductor` (default ~/.cache/...). Returns the folder.

    Call it at program start: Inductor fixes the folder the first time anything asks for it,
    and importing lpips (which φ needs) already does.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        cache_dir = Path(base) / "lbrgm-fast" / "torchinductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    return Path(cache_dir)


def make_eager_step(
    objective: StepObjective,
    optimizer: torch.optim.Optimizer,
    w_plus: torch.Tensor,
    z: torch.Tensor | None,
    precision: Precision = "fp32",
) -> Callable[[], StepOutput]:
    """The step run by the interpreter: returns (terms [T, B], images, w+ before, z before).

    In float32 it is the reference (the research code's step); the compiled and CUDA-graph
    steps are this same function, compiled and / or captured.
    """
    device_type = w_plus.device.type
    dtype = _AUTOCAST_DTYPES.get(precision)
    params = [w_plus] + ([] if z is None else [z])
    loss_scale = FP16_LOSS_SCALE if precision == "fp16" else 1.0

    def step() -> StepOutput:
        w_before = w_plus.detach().clone()
        z_before = None if z is None else z.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        # cache_enabled=False: cached casts must not outlive a CUDA graph capture (torch's
        # CUDA-graph notes); the weights are frozen, so the cache would hold nothing anyway.
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None, cache_enabled=False):
            terms, images = objective(w_plus, z)
        (terms[0].sum() * loss_scale).backward()
        if loss_scale != 1.0:
            for p in params:
                p.grad.div_(loss_scale)  # type: ignore[union-attr]
        optimizer.step()
        return terms.detach(), images.detach(), w_before, z_before

    return step


def _compiled(body: Callable[[], StepOutput], memory_budget: float, fresh: bool) -> Callable[[], StepOutput]:
    """torch.compile of the whole step, with static shapes.

    Dynamo caches compiled code per *code object* (every step shares `make_eager_step`'s inner
    function) with guards on what the code reads. The objective's tensors are graph inputs,
    guarded on shape and dtype only, so a new objective of the same structure reuses the
    compiled code; the optimiser is guarded on its identity. Every run with a new optimiser
    would therefore add a cache entry, and after `recompile_limit` entries torch would silently
    fall back to eager: so by default (`fresh`) a step starts from a clean slate (Inductor's
    on-disk cache keeps that recompilation cheap). `fresh=False` keeps the entries: for a step
    over the same latents and optimiser refilled in place (`refill_latents`), which is then not
    traced again, or for a few steps that must coexist (the benchmark's modes).
    """
    if fresh:
        torch.compiler.reset()
    compiled = torch.compile(body, dynamic=False)
    if memory_budget >= 1.0:
        return compiled
    import torch._functorch.config as functorch_config

    def step() -> StepOutput:
        # AOTAutograd reads the budget when it partitions forward and backward, i.e. on the
        # calls that (re)compile; the steady-state calls only pay for a dictionary update.
        with functorch_config.patch(activation_memory_budget=memory_budget):
            return compiled()

    return step


def _clone_output(out: StepOutput) -> StepOutput:
    terms, images, w_before, z_before = out
    return terms.clone(), images.clone(), w_before.clone(), None if z_before is None else z_before.clone()


def _cuda_graph(body: Callable[[], StepOutput], warmup: int) -> Callable[[], StepOutput]:
    """Replay `body` as one CUDA graph, after torch's "whole network capture" recipe.

    The first `warmup` calls run `body` for real on a side stream (compiling it, creating Adam's
    state, letting cuDNN pick algorithms). The next call captures it on that same stream —
    capture records kernels without running them — and every call from then on replays the
    graph, which updates the latents and Adam's state in place. The graph's outputs live in
    its private memory pool and are overwritten by the next replay, so each call returns
    copies. Unlike the recipe, `.grad` is not cleared before capture: a compiled body guards on
    whether `.grad` is set, and a guard miss would recompile inside the capture. The body's own
    zero_grad clears it during capture instead, so the backward pass allocates the gradients
    in the graph's pool and each replay rewrites them there.
    """
    stream = torch.cuda.Stream()
    graph: torch.cuda.CUDAGraph | None = None
    static_out: StepOutput | None = None
    calls = 0

    def step() -> StepOutput:
        nonlocal graph, static_out, calls
        if graph is None and calls < warmup:
            calls += 1
            # Each use of the side stream first waits for the work queued before it, so memory
            # freed by the loop on the main stream is never reused while still being read.
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                out = body()
            torch.cuda.current_stream().wait_stream(stream)
            return out
        if graph is None:
            # Kept only once captured: a capture that raises leaves the next call to try again,
            # not to replay an empty graph.
            captured = torch.cuda.CUDAGraph()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.graph(captured, stream=stream):
                static_out = body()
            graph = captured
        graph.replay()
        assert static_out is not None
        return _clone_output(static_out)

    return step


def refill_latents(
    optimizer: torch.optim.Optimizer,
    values: Sequence[torch.Tensor],
    saved: dict | None = None,
) -> None:
    """Start `optimizer` over again in place: its parameters take `values`, its state that of
    a new Adam (zero moments and step counts) or, with `saved` (a state_dict of an Adam over
    the same latents), that of the saved optimiser.

    Existing tensors are overwritten rather than replaced, so a compiled step, which is
    specialised to these very tensors and this optimiser, runs the next batch without being
    traced again (see `make_step`'s `fresh`). Adam with zero moments and step counts takes
    exactly a new Adam's first step.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) != len(values):
        raise ValueError(f"the optimiser has {len(params)} parameters, got {len(values)} values")
    with torch.no_grad():
        for param, value in zip(params, values, strict=True):
            param.copy_(value)
    if saved is not None and not all(optimizer.state.get(p) for p in params):
        load_optimizer_state(optimizer, saved)  # nothing to overwrite yet: load it plainly
        return
    for index, param in enumerate(params):
        state = optimizer.state.get(param, {})
        source = saved["state"][index] if saved is not None else None
        with torch.no_grad():
            for name, tensor in state.items():
                if source is None:
                    tensor.zero_()
                else:
                    tensor.copy_(source[name])


def _timed_first_calls(step: Callable[[], StepOutput], calls: int, profiler: Profiler) -> Callable[[], StepOutput]:
    """Time the first `calls` calls of `step` in the profiler's "compile" phase."""
    done = 0

    def timed() -> StepOutput:
        nonlocal done
        if done >= calls:
            return step()
        done += 1
        with profiler.phase("compile"):
            return step()

    return timed


def make_step(
    objective: StepObjective,
    optimizer: torch.optim.Optimizer,
    w_plus: torch.Tensor,
    z: torch.Tensor | None,
    options: StepOptions = StepOptions(),
    profiler: Profiler | None = None,
    fresh: bool = True,
) -> Callable[[], StepOutput]:
    """The step for `options`: each call does one Adam step and returns
    (terms [T, B], images, w+ before, z before) of the iterate *before* the update.

    Args:
        objective: The loss (reconstruct.Objective); its generator's
            `synthesis.low_precision_resolutions` is set for `options.precision`.
        optimizer: Adam over [w_plus] (+ [z]), from `make_optimizer` for compiled or
            CUDA-graph steps.
        w_plus, z: The latents, updated in place by the optimiser.
        options: How the step runs.
        profiler: Receives the "compile" phase (the first `options.warmup_calls` calls, or
            only the CUDA-graph warm-up and capture when the compiled code is reused).
        fresh: True (default): drop the compiled code of earlier steps first (`_compiled`).
            False: keep it. When `optimizer` and the latents are those of an earlier compiled
            step, refilled in place with `refill_latents`, that code is reused rather than
            traced again; otherwise (a new optimiser, another objective structure) this step is
            traced on its first calls and kept alongside the earlier ones, up to torch's
            recompile limit. The first `options.warmup_calls` calls are timed as
            compilation when `fresh`; otherwise only a CUDA graph's warm-up and capture are.
    """
    options.check(w_plus.device)
    if options.cuda_graphs and not all(g.get("capturable", False) for g in optimizer.param_groups):
        raise ValueError("CUDA graphs need a capturable optimiser: build it with make_optimizer")
    if options.precision != "fp32":
        synthesis = objective.generator.synthesis
        synthesis.low_precision_resolutions = low_precision_resolutions(synthesis.config, options.precision)
    step = make_eager_step(objective, optimizer, w_plus, z, options.precision)
    if options.compile:
        step = _compiled(step, options.memory_budget, fresh)
    if options.cuda_graphs:
        # A graph records the addresses of this objective's tensors: captured again per step.
        step = _cuda_graph(step, CUDA_GRAPH_WARMUP)
    compiling_calls = options.warmup_calls if fresh else (CUDA_GRAPH_WARMUP + 1 if options.cuda_graphs else 0)
    if profiler is not None and compiling_calls:
        step = _timed_first_calls(step, compiling_calls, profiler)
    return step


class StepProfile:
    """A step whose calls `skip` … `skip + n - 1` are recorded by the torch profiler.

    Close it when the loop that calls it ends, however it ends::

        step = StepProfile(step_fn, n, out_dir, skip=options.warmup_calls)
        try:
            for _ in range(steps):
                step()
        finally:
            step.close()

    `out_dir/trace.json` (a Chrome / Perfetto trace) and `out_dir/ops.txt` (the operators by
    self time, then by operator and input shapes) are written when the n-th recorded call
    returns, or by `close()` while a recording is under way: a run that ends or stops
    early keeps the steps it recorded. (A profiler left running at interpreter exit crashed
    the process in torch 2.14.) `recorded` counts the recorded calls; a run that ends within
    the first `skip` calls records none and writes nothing. Pass `skip=options.warmup_calls`
    to record the steady state rather than compilation.

    Raises:
        UserError: n < 1, skip < 0, or `out_dir` cannot be made a folder (checked here, before
            any step runs).
    """

    def __init__(self, step_fn: Callable[[], StepOutput], n: int, out_dir: str | Path, skip: int = 0) -> None:
        if n < 1 or skip < 0:
            raise UserError(f"profile needs n >= 1 steps after skip >= 0, got n={n}, skip={skip}")
        self.out = Path(out_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write the profile into {self.out}: {error.strerror or error}") from error
        self._step_fn, self._n, self._skip = step_fn, n, skip
        self._activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            self._activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=self._activities, record_shapes=True, profile_memory=True)
        self._calls = 0
        self._recording = False
        self.recorded = 0

    def __call__(self) -> StepOutput:
        index, self._calls = self._calls, self._calls + 1
        if not self._skip <= index < self._skip + self._n:
            return self._step_fn()
        if index == self._skip:
            self._prof.start()
            self._recording = True
        with torch.profiler.record_function("lbrgm_step"):
            result = self._step_fn()
        self.recorded += 1
        if index == self._skip + self._n - 1:
            self.close()
        return result

    def close(self) -> None:
        """Stop a recording under way and write what it holds; nothing otherwise."""
        if not self._recording:
            return
        self._recording = False
        self._prof.stop()
        self._prof.export_chrome_trace(str(self.out / "trace.json"))
        sort = "self_cuda_time_total" if len(self._activities) > 1 else "self_cpu_time_total"
        by_op = self._prof.key_averages().table(sort_by=sort, row_limit=40)
        # Operators by input shape as well: which layer a slow convolution belongs to.
        by_shape = self._prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=30)
        (self.out / "ops.txt").write_text(
            f"{self.recorded} step(s) recorded\n\nBy operator:\n{by_op}\n\nBy operator and input shapes:\n{by_shape}\n"
        )
