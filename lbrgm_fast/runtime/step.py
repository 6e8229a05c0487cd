"""How the optimisation step runs: eager, compiled, mixed precision, replayed as a CUDA graph.

The step itself — zero_grad, J, backward, Adam's update — is the method's (`loop.AdamStep`);
this module runs that function as `StepOptions` ask and knows nothing of L-BRGM:

* **eager float32** (the default `StepOptions()`): the research code's numerics, the reference
  every other mode is tested against.
* **compiled**: the whole step function goes through `torch.compile` with static shapes (the
  batch never changes within a run); Dynamo splits it at `backward()` into a forward graph,
  whose backward AOTAutograd compiles ahead of time, and an Adam-update graph. The weights are
  frozen, so neither graph computes a weight gradient.
* **precision** "bf16" / "fp16": autocast around the forward, with float32 islands in the
  model, φ, the loss reductions and Adam (the step's `low_precision_blocks` and
  `FP16_LOSS_SCALE`).
* **CUDA graphs** (CUDA only): the step, compiled or not, is captured once into a CUDA graph
  after a few warm-up steps on a side stream, then replayed: one launch per step. Adam must be
  `capturable` (`make_optimizer` does this).

A compiled step owns its compiled code (its own recompilation region, `_compile`, with torch
>= 2.14; an older torch has no such regions and resets every compiled step's code instead, so
a job's two Reconstructors then recompile in turn): nothing another step or another
Reconstructor compiled is thrown away when a step is built, and a step
rebuilt for the next batch over the same latents and Adam (`refill_latents`, then
`Step.rebind`) runs that code without being traced again. Inductor also caches its code on
disk (`configure_compile_cache`), so a later process skips code generation. The first calls
of a compiled or captured step compile / capture it (and run a real step each); their time
goes to the profiler's "compile" phase, reported apart from the loop. Measurements:
bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import UserError
from lbrgm_fast.model import SynthesisNetwork
from lbrgm_fast.runtime.devices import cpu_features
from lbrgm_fast.runtime.profiler import Profiler

#: What a step returns, of the iterate *before* its update: (terms [T, B], images [B, 3, H, W],
#: w+ [B, num_ws, w_dim], z [B, z_dim] or None).
StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Static loss scale of the fp16 step: without it the gradients reaching the fp16 blocks sit
#: near fp16's smallest normal number (a pixel's share of the loss means is tiny); 2^12 lifts
#: them well inside its range and far from overflow. Static, because a dynamic scale needs a
#: host read per step. A power of two, so scaling and unscaling are exact.
FP16_LOSS_SCALE = 2.0**12
#: Warm-up steps run (for real) on a side stream before a CUDA graph is captured: enough for
#: Dynamo's recompile once Adam's state exists, cuDNN's algorithm search and cuBLAS workspaces.
CUDA_GRAPH_WARMUP = 3
#: Calls of a compiled step that may (re)compile: the first traces with Adam's state still
#: empty, the second retraces once the state exists.
COMPILE_WARMUP = 2
#: Runs shorter than this are not compiled by default: a first compilation costs minutes on a
#: CPU (cached afterwards) and saves a fraction of a second per step.
MIN_STEPS_TO_COMPILE = 500


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
            Needs `compile`.
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


def emulation_note(options: StepOptions, device: torch.device | str) -> str | None:
    """A warning when `options` ask for a precision this CPU only emulates (many times slower
    than fp32: fp16 anywhere on the CPU, bf16 without avx512_bf16 or AMX); None otherwise."""
    if torch.device(device).type != "cpu":
        return None
    if options.precision == "fp16" or (options.precision == "bf16" and not cpu_features().native_bf16):
        return (f"--precision {options.precision} on this CPU: without native {options.precision} instructions "
                f"torch emulates it, many times slower than fp32 ({default_precision(device)[1]})")
    return None


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
    oneDNN), so weights stored NCHW would be converted on every step, forward and backward.
    Only the layout changes, not a value (the convolutions may round differently, ~1e-7).
    Eager and CUDA steps keep the weights as loaded: there it made no difference
    (bench/RESULTS.md). Call it before anything runs the networks, so that every phase of a
    run sees one layout.
    """
    if options.compile and torch.device(device).type == "cpu":
        for network in networks:
            if network is not None:
                network.to(memory_format=torch.channels_last)


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
    """Synthesis blocks allowed to run under the step's autocast: all of them for bf16, whose
    range is float32's; for fp16 only the checkpoint's `num_fp16_res` blocks, whose
    `conv_clamp` keeps activations in range, as NVIDIA runs them."""
    if precision == "bf16":
        return frozenset(config.block_resolutions)
    return frozenset(config.fp16_resolutions)


@contextlib.contextmanager
def low_precision_blocks(synthesis: SynthesisNetwork, precision: Precision) -> Iterator[None]:
    """Within the block, `synthesis` runs the blocks `precision` allows in low precision
    (`low_precision_resolutions`); its own setting is restored on leaving. The step enters it
    around its forward pass only, so the caller's generator is never left changed."""
    saved = synthesis.low_precision_resolutions
    if precision != "fp32":
        synthesis.low_precision_resolutions = low_precision_resolutions(synthesis.config, precision)
    try:
        yield
    finally:
        synthesis.low_precision_resolutions = saved


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


class StepBody(Protocol):
    """What `make_step` runs: one optimisation step of an objective (`loop.AdamStep`)."""

    optimizer: torch.optim.Optimizer

    def __call__(self, objective: Any) -> StepOutput: ...


def _compile(body: StepBody, memory_budget: float) -> Callable[[Any], StepOutput]:
    """torch.compile of the whole step, with static shapes, in its own recompilation region.

    Dynamo keeps compiled code per code object, with guards on what the code reads. Every step
    shares `AdamStep.__call__` and Adam's own code, and each new optimiser (guarded on its
    identity) needs new entries; with one shared set of entries, torch would fall back to
    eager after `recompile_limit` of them. `isolate_recompiles` (torch >= 2.14) gives this
    step its own set, counted against that limit alone, while leaving every other step's
    code in place. Torch without it has one set per code object: the only way to keep new
    steps compiled there is to clear every compiled step first (`torch.compiler.reset`).

    The objective is an argument: its tensors are graph inputs, guarded on shape and dtype,
    so an objective of the same structure (the next batch) runs the same code.
    """
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
        compiled = torch.compile(body, dynamic=False, isolate_recompiles=True)
    else:
        torch.compiler.reset()
        compiled = torch.compile(body, dynamic=False)
    if memory_budget >= 1.0:
        return compiled
    import torch._functorch.config as functorch_config

    def step(objective: Any) -> StepOutput:
        # AOTAutograd reads the budget when it partitions forward and backward, i.e. on the
        # calls that (re)compile; the steady-state calls only pay for a dictionary update.
        with functorch_config.patch(activation_memory_budget=memory_budget):
            return compiled(objective)

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
    traced again (see `Step.rebind`). Adam with zero moments and step counts takes
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


class Step:
    """One optimisation step of `objective`, run as `options` ask (see `make_step`).

    Each call does one update of the latents and returns `StepOutput` of the iterate before
    it. `rebind` makes the step of another objective of the same structure over the same
    latents and optimiser (refilled with `refill_latents`), running the same compiled code.
    """

    def __init__(
        self,
        body: StepBody,
        run_body: Callable[[Any], StepOutput],
        objective: Any,
        options: StepOptions,
        profiler: Profiler | None,
        compiling_calls: int,
    ) -> None:
        self.body, self._run_body, self.options = body, run_body, options

        def call() -> StepOutput:
            return run_body(objective)

        step = call
        if options.cuda_graphs:
            # A graph records the addresses of this objective's tensors: captured per objective.
            step = _cuda_graph(step, CUDA_GRAPH_WARMUP)
        if profiler is not None and compiling_calls:
            step = _timed_first_calls(step, compiling_calls, profiler)
        self._step = step

    def __call__(self) -> StepOutput:
        return self._step()

    def rebind(self, objective: Any, profiler: Profiler | None = None) -> Step:
        """This step for `objective`: no tracing; a CUDA graph is captured again (its warm-up
        and capture go to `profiler`'s "compile" phase)."""
        compiling_calls = self.options.warmup_calls if self.options.cuda_graphs else 0
        return Step(self.body, self._run_body, objective, self.options, profiler, compiling_calls)


def make_step(body: StepBody, objective: Any, options: StepOptions = StepOptions(), profiler: Profiler | None = None) -> Step:
    """`body` (one step, e.g. `loop.AdamStep`) run on `objective` as `options` ask.

    Args:
        body: The step function; called with the objective, it updates its latents in place
            and returns `StepOutput` of the iterate before the update.
        objective: What `body` is called with.
        options: How the step runs. A compiled step gets its own compiled code (`_compile`).
        profiler: Receives the "compile" phase: the first `options.warmup_calls` calls.
    """
    if options.cuda_graphs and not all(g.get("capturable", False) for g in body.optimizer.param_groups):
        raise ValueError("CUDA graphs need a capturable optimiser: build it with make_optimizer")
    run_body = _compile(body, options.memory_budget) if options.compile else body
    return Step(body, run_body, objective, options, profiler, options.warmup_calls)


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
    early keeps the steps it recorded, and no profiler is left running at interpreter exit
    (which can crash it). `recorded` counts the recorded calls; a run that ends within
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
