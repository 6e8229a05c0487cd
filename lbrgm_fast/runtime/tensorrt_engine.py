"""TensorRT forward engine: the plan's engines bound to torch CUDA tensors by pointer.

Written against the documented TensorRT 10 Python API (`Runtime.deserialize_cuda_engine`,
`IExecutionContext.set_input_shape` / `set_tensor_address` / `execute_async_v3`). TensorRT cannot
be installed on this project's development machines, so this module has not been executed there.

Every call runs on torch's current CUDA stream with torch-allocated inputs and outputs: no host
copies and no synchronisation. Engines come from the plan when it holds ones for this GPU model,
compute capability and TensorRT version; otherwise (or when they fail to load) they are built
from the plan's ONNX graphs once, with a one-line note, and cached next to the plan.

A plan may come from a stranger, and an engine is opaque: it is only ever deserialised by a
runtime that refuses engines carrying host code (`_data_only_runtime`), and only from the
manifest entry whose key is this GPU's and TensorRT's (members the manifest lists) or from the
engine cache this machine built next to the plan (`NAME.plan.cache/`, which is therefore this
machine's own: never take one from someone else; docs/plan-format.md, "Trust").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.plan import GRAPHS

if TYPE_CHECKING:
    from lbrgm_fast.plan import Plan

_TIMING_CACHE = "timing.cache"


def run_in_batches(
    run: Callable[..., list[torch.Tensor]], tensors: Sequence[torch.Tensor], max_batch: int
) -> list[torch.Tensor]:
    """`run(*tensors)`, in slices of at most `max_batch` along the batch dimension when the
    batch is larger (an engine's profile ends at the plan's max_batch, a job's batch need not),
    each output concatenated back."""
    batch = tensors[0].shape[0]
    if batch <= max_batch:
        return run(*tensors)
    parts = [run(*(t[start : start + max_batch] for t in tensors)) for start in range(0, batch, max_batch)]
    return [torch.cat(outputs) for outputs in zip(*parts)]


class _Graph:
    """One deserialized engine and its execution context."""

    def __init__(self, runtime: Any, serialized: bytes, name: str) -> None:
        import tensorrt as trt

        self.name = name
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the {name} engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        for n in names:
            if self.engine.get_tensor_dtype(n) != trt.float32:
                raise RuntimeError(f"the {name} engine's tensor {n} is not float32")
        # The largest batch of the engine's optimisation profile ([min, opt, max] shapes).
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])

    def run(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        if len(tensors) != len(self.inputs):
            raise ValueError(f"the {self.name} engine takes {len(self.inputs)} inputs, got {len(tensors)}")
        return run_in_batches(self._run_once, tensors, self.max_batch)

    def _run_once(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        device = tensors[0].device
        inputs = [t.detach().to(torch.float32).contiguous() for t in tensors]  # alive until enqueued
        for name, tensor in zip(self.inputs, inputs):
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{name} shape {list(tensor.shape)} is outside the {self.name} engine's profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device=device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        # torch's stream: the inputs were written there and the caller reads the outputs there.
        # The caching allocator reuses memory in stream order, so the tensors stay valid.
        stream = torch.cuda.current_stream(device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT failed to run the {self.name} engine")
        return outputs


class TensorRTEngine:
    """`ForwardEngine` on TensorRT engines (keys: "mapping", "synthesis", "features", "lpips")."""

    name = "tensorrt"

    def __init__(self, engines: Mapping[str, bytes], device: torch.device | str = "cuda") -> None:
        from lbrgm_fast.export.tensorrt_build import tensorrt_problem

        problem = tensorrt_problem()
        if problem:
            raise UserError(f"cannot use TensorRT here: {problem}")
        import tensorrt as trt

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise UserError("the TensorRT backend needs --device cuda")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = _data_only_runtime(trt, self._logger)
        with torch.cuda.device(self.device):
            self._graphs = {name: _Graph(self._runtime, data, name) for name, data in engines.items()}

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        device: torch.device | str = "cuda",
        note: Callable[[str], None] = lambda message: None,
    ) -> TensorRTEngine:
        """Engines for this GPU and TensorRT from the plan, else from the cache next to it, else
        built now from the plan's ONNX graphs (and cached); each fallback says so in one line."""
        from lbrgm_fast.export.tensorrt_build import BuildOptions, build_engines, current_engine_key, tensorrt_problem

        problem = tensorrt_problem()
        if problem:
            raise UserError(f"cannot use TensorRT here: {problem}")
        device = torch.device(device)
        key = current_engine_key(torch.cuda.current_device() if device.index is None else device.index)
        names = [n for n in GRAPHS if plan.has_graph(n)]
        entry = plan.tensorrt_entry(key)
        if entry is not None:
            try:
                return cls({n: plan.member(entry["engines"][n]) for n in names}, device)
            except (RuntimeError, KeyError) as exc:
                note(f"the TensorRT engines in {plan.path} for {key} do not load ({exc}); rebuilding them")
        else:
            available = ", ".join(sorted(plan.manifest["tensorrt"])) or "none"
            note(f"{plan.path} has no TensorRT engines for {key} (it has: {available}); using or building ones cached next to it")
        # Keyed by the plan's content too: a plan rebuilt at the same path (another checkpoint,
        # precision or batch range) must not pick up the old plan's engines.
        folder = plan.cache_dir / "tensorrt" / f"{plan.content_sha256[:16]}-{key}"
        cached = {n: folder / f"{n}.engine" for n in names}
        if all(p.is_file() for p in cached.values()):
            try:
                return cls({n: p.read_bytes() for n, p in cached.items()}, device)
            except RuntimeError as exc:
                note(f"the cached TensorRT engines in {folder} do not load ({exc}); rebuilding them")
        options = BuildOptions(
            precision=plan.manifest["precision"]["tensorrt"],
            max_batch=plan.manifest["max_batch"],
            resolution=plan.config.img_resolution,
        )
        timing = folder / _TIMING_CACHE
        engines, timing_cache = build_engines(
            {n: plan.onnx(n) for n in names}, options, timing.read_bytes() if timing.is_file() else None, note
        )
        _store(folder, {**{f"{n}.engine": e for n, e in engines.items()}, _TIMING_CACHE: timing_cache or b""}, note)
        return cls(engines, device)

    def _run(self, graph: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
        if graph not in self._graphs:
            raise RuntimeError(f"this engine has no {graph} engine")
        if tensors[0].device.type != "cuda":
            raise ValueError(f"the TensorRT engine runs on CUDA tensors, got one on {tensors[0].device}")
        return self._graphs[graph].run(*tensors)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        (ws,) = self._run("mapping", z)
        (images,) = self._run("synthesis", ws)
        return images

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self._run("features", images)

    @torch.no_grad()
    def lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        (distance,) = self._run("lpips", x, y)
        return distance


def _data_only_runtime(trt: Any, logger: Any) -> Any:
    """A TensorRT runtime that deserialises engines as data, never as code.

    `engine_host_code_allowed = False` makes it refuse engines that carry host code (version-
    compatible engines with an embedded lean runtime, plugin libraries serialised into the
    engine), which would otherwise be loaded and run in this process. False is TensorRT's
    default since the setting appeared (8.6; `IRuntime::setEngineHostCodeAllowed`, Python
    `Runtime.engine_host_code_allowed`, in every TensorRT 10 release); it is set explicitly so
    that no default can change it. `tempfile_control_flags = 0` also forbids TensorRT the
    in-memory and temporary files it loads such code from. Plain engines, which is all
    `lbrgm-fast build` makes, need neither.
    """
    runtime = trt.Runtime(logger)
    runtime.engine_host_code_allowed = False
    runtime.tempfile_control_flags = 0
    return runtime


def _store(folder: Path, files: Mapping[str, bytes], note: Callable[[str], None]) -> None:
    """Cache rebuilt engines; a read-only location only costs a rebuild next time."""
    from lbrgm_fast.io import atomic_write

    try:
        for name, data in files.items():
            atomic_write(folder / name, lambda handle, data=data: handle.write(data))
    except OSError as exc:
        note(f"could not cache the TensorRT engines in {folder} ({exc.strerror or exc}); they will be rebuilt next time")


__all__ = ["TensorRTEngine"]
