"""Choosing the forward backend: `--forward-backend auto|torch|onnxruntime|tensorrt`.

`auto` measures every backend available here on each forward phase (a warm-up and a few timed
runs at the shapes the reconstruction uses), takes the fastest per phase, says what it picked
and why, and caches the choice in `<plan>.cache/backends.json`, keyed by the plan's content and
this machine (device, thread count, library versions), so later runs skip the measurement.
"""

from __future__ import annotations

import datetime
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.io import atomic_write
from lbrgm_fast.notes import NoteReporter, SilentNotes
from lbrgm_fast.plan import Plan
from lbrgm_fast.runtime.engines import ForwardEngine, TorchEngine

__all__ = ["BACKENDS", "CHOICE_FILE", "PHASES", "PhaseEngine", "Selection", "backend_problems", "make_engine", "select_engine"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
#: generate: mapping + synthesis; features: φ (these two score the N1 candidates); lpips: the monitor.
PHASES = ("generate", "features", "lpips")
CHOICE_FILE = "backends.json"


class PhaseEngine:
    """A `ForwardEngine` that runs each phase on the engine chosen for it."""

    def __init__(self, engines: dict[str, ForwardEngine]) -> None:
        self.engines = engines
        self.name = "auto(" + ", ".join(f"{phase}={engine.name}" for phase, engine in engines.items()) + ")"

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.engines["generate"].generate(z)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.engines["features"].features(images)

    def lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if "lpips" not in self.engines:
            raise RuntimeError("this plan has no LPIPS monitor")
        return self.engines["lpips"].lpips(x, y)


@dataclass
class Selection:
    """The engine to use and how it was chosen (for the user and report.json).

    Attributes:
        engine: The engine (a PhaseEngine for `auto`).
        choice: Backend per phase.
        seconds: Per phase, the median seconds of each measured backend.
        reason: One line saying what was picked and why.
        cached: True when the choice came from the cache file instead of a measurement.
        unavailable: Backends that could not be used here, with the reason.
    """

    engine: ForwardEngine
    choice: dict[str, str]
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    reason: str = ""
    cached: bool = False
    unavailable: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"choice": self.choice, "seconds": self.seconds, "reason": self.reason, "cached": self.cached, "unavailable": self.unavailable}


def backend_problems(device: torch.device) -> dict[str, str]:
    """Backends that cannot run on `device` on this machine, each with the reason."""
    from lbrgm_fast.export.tensorrt_build import tensorrt_problem
    from lbrgm_fast.runtime.onnx_engine import provider_problem

    problems: dict[str, str] = {}
    ort_problem = provider_problem("cuda" if device.type == "cuda" else "cpu", device)
    if ort_problem:
        problems["onnxruntime"] = ort_problem
    trt_problem = tensorrt_problem() if device.type == "cuda" else "TensorRT needs a CUDA device"
    if trt_problem:
        problems["tensorrt"] = trt_problem
    return problems


def make_engine(
    plan: Plan,
    backend: str,
    device: torch.device,
    torch_engine: TorchEngine | None = None,
    note: Callable[[str], None] = lambda message: None,
    threads: int | None = None,
) -> ForwardEngine:
    """One backend's engine for the plan on `device` (UserError if it cannot run here)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown forward backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    problem = backend_problems(device).get(backend)
    if problem:
        raise UserError(f"--forward-backend {backend}: {problem}")
    if backend == "torch":
        if torch_engine is not None:
            return torch_engine
        monitor = plan.monitor()
        return TorchEngine(
            plan.generator().to(device), plan.perceptual().to(device), None if monitor is None else monitor.to(device)
        )
    if backend == "onnxruntime":
        from lbrgm_fast.runtime.onnx_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine.from_plan(plan, device, threads=threads)
    from lbrgm_fast.export.tensorrt_build import TensorRTUnavailable
    from lbrgm_fast.runtime.tensorrt_engine import TensorRTEngine

    try:
        return TensorRTEngine.from_plan(plan, device, note)
    except (TensorRTUnavailable, RuntimeError) as exc:
        raise UserError(f"--forward-backend tensorrt: {str(exc).splitlines()[0]}") from None


def _machine_key(device: torch.device, backends: list[str]) -> str:
    """What a measurement depends on besides the plan: the device, threads and library versions."""
    parts = [device.type]
    if device.type == "cuda":
        index = device.index or 0
        major, minor = torch.cuda.get_device_capability(index)
        parts += [torch.cuda.get_device_name(index), f"sm{major}{minor}"]
    else:
        parts += [platform.processor() or platform.machine(), f"threads={torch.get_num_threads()}"]
    parts.append(f"torch={torch.__version__}")
    if "onnxruntime" in backends:
        import onnxruntime

        parts.append(f"onnxruntime={onnxruntime.__version__}")
    if "tensorrt" in backends:
        import tensorrt

        parts.append(f"tensorrt={tensorrt.__version__}")
    return "|".join(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up run."""
    run()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _phase_inputs(plan: Plan, device: torch.device, batch: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Seeded inputs at the shapes of the reconstruction: a candidate batch of latents and of
    generator-resolution images; the monitor compares one image pair per batch element."""
    gen = torch.Generator().manual_seed(0)
    side = plan.config.img_resolution
    z = torch.randn(batch, plan.config.z_dim, generator=gen)
    images = torch.rand(batch, 3, side, side, generator=gen) * 2 - 1
    pair = (torch.rand(1, 3, side, side, generator=gen) * 2 - 1, torch.rand(1, 3, side, side, generator=gen) * 2 - 1)
    return {"generate": (z.to(device),), "features": (images.to(device),), "lpips": tuple(t.to(device) for t in pair)}


def select_engine(
    plan: Plan,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    reporter: NoteReporter | None = None,
    *,
    torch_engine: TorchEngine | None = None,
    batch: int = 8,
    lpips: bool = True,
    repeats: int = 3,
    use_cache: bool = True,
    threads: int | None = None,
) -> Selection:
    """The forward engine for `--forward-backend BACKEND`.

    Args:
        plan: The engine plan.
        backend: "auto", "torch", "onnxruntime" or "tensorrt".
        device: Where the reconstruction runs.
        reporter: Anything with `note(message)`; told what was picked (and fallbacks).
        torch_engine: The torch modules already on `device` (loaded from the plan if None).
        batch: Candidate batch used for the measurement (the Reconstructor's candidate_batch).
        lpips: Whether the run monitors LPIPS (oracle early stopping); without it the lpips
            phase is neither measured nor chosen, even when the plan holds a monitor.
        repeats: Timed runs per backend and phase, after one warm-up.
        use_cache: Read and write the measured choice next to the plan.
        threads: ONNX Runtime intra-op threads on the CPU (None: its default).

    Raises:
        UserError: an unknown backend, or an explicit one that cannot run here.
    """
    device = torch.device(device)
    reporter = reporter or SilentNotes()
    phases = [p for p in PHASES if p != "lpips" or (lpips and plan.manifest["monitor"] is not None)]
    if backend != "auto":
        engine = make_engine(plan, backend, device, torch_engine, reporter.note, threads)
        return Selection(engine, {p: backend for p in phases}, reason=f"forward backend {backend} (requested)")

    unavailable = backend_problems(device)
    if plan.manifest["tensorrt"] and "tensorrt" in unavailable:
        reporter.note(f"auto: not using the plan's TensorRT engines ({', '.join(sorted(plan.manifest['tensorrt']))}): {unavailable['tensorrt']}")
    candidates = [b for b in BACKENDS if b not in unavailable]
    # The phases are part of the key: a run that monitors LPIPS and one that does not (the same
    # job's batches with and without ground truth) each keep their own measured choice.
    cache_key = f"{plan.content_sha256}|{_machine_key(device, candidates)}|batch={batch}|phases={','.join(phases)}"
    cached = _read_choice(plan, cache_key) if use_cache else None

    engines: dict[str, ForwardEngine] = {}

    def engine_for(name: str) -> ForwardEngine | None:
        if name not in engines and name not in unavailable:
            try:
                engines[name] = make_engine(plan, name, device, torch_engine, reporter.note, threads)
            except UserError as exc:
                unavailable[name] = str(exc)
                reporter.note(f"auto: skipping {name}: {exc}")
        return engines.get(name)

    if (
        cached is not None
        and set(cached["choice"]) == set(phases)
        and all(engine_for(b) is not None for b in cached["choice"].values())
    ):
        choice, seconds = cached["choice"], cached["seconds"]
        reason = f"auto (measured earlier on this machine): {_summary(choice, seconds)}"
        reporter.note(reason)
        return Selection(PhaseEngine({p: engines[choice[p]] for p in phases}), choice, seconds, reason, True, unavailable)

    inputs = _phase_inputs(plan, device, batch)
    seconds: dict[str, dict[str, float]] = {p: {} for p in phases}
    for name in candidates:
        engine = engine_for(name)
        if engine is None:
            continue
        for phase in phases:
            try:
                seconds[phase][name] = _time(functools.partial(getattr(engine, phase), *inputs[phase]), device, repeats)
            except Exception as exc:  # noqa: BLE001 - a backend that fails here is skipped, not fatal
                reporter.note(f"auto: {name} failed on {phase} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); not using it there")
    choice = {p: min(seconds[p], key=seconds[p].get) for p in phases if seconds[p]}
    missing = [p for p in phases if p not in choice]
    if missing:
        raise UserError(f"no forward backend could run {', '.join(missing)} here")
    reason = f"auto (measured now, batch {batch}, median of {repeats}): {_summary(choice, seconds)}"
    reporter.note(reason)
    if use_cache:
        _write_choice(plan, cache_key, {"choice": choice, "seconds": seconds, "reason": reason, "measured": _now()}, reporter)
    return Selection(PhaseEngine({p: engines[choice[p]] for p in phases}), choice, seconds, reason, False, unavailable)


def _summary(choice: dict[str, str], seconds: dict[str, dict[str, float]]) -> str:
    """'generate: onnxruntime 0.21 s (torch 0.35 s); features: ...'"""
    parts = []
    for phase, name in choice.items():
        others = ", ".join(f"{b} {s:.3g} s" for b, s in sorted(seconds[phase].items()) if b != name)
        parts.append(f"{phase}: {name} {seconds[phase][name]:.3g} s" + (f" ({others})" if others else ""))
    return "; ".join(parts)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_choice(plan: Plan, key: str) -> dict[str, Any] | None:
    """The cached choice for `key`, or None (a missing or unreadable cache only costs a measurement)."""
    path = plan.cache_dir / CHOICE_FILE
    try:
        entry = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("choice"), dict)
        and isinstance(entry.get("seconds"), dict)
        and all(b in BACKENDS for b in entry["choice"].values())
    ):
        return entry
    return None


def _write_choice(plan: Plan, key: str, entry: dict[str, Any], reporter: NoteReporter) -> None:
    path = plan.cache_dir / CHOICE_FILE
    try:
        existing = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError):
        existing = {}
    existing[key] = entry
    try:
        atomic_write(path, lambda handle: handle.write(json.dumps(existing, indent=2).encode()))
    except OSError as exc:
        reporter.note(f"could not cache the backend choice in {path} ({exc.strerror or exc})")
