"""TensorRT 10 engines built from the plan's ONNX graphs.

Written against the documented TensorRT 10 Python API (`tensorrt.Builder`, `OnnxParser`,
`IOptimizationProfile`, `ITimingCache`, `BuilderFlag.FP16` with `OBEY_PRECISION_CONSTRAINTS`).
TensorRT cannot be installed on this project's development machines, so this module has not
been executed there; everything that does not need TensorRT itself (profiles, keys, which
tensors stay float32) is plain Python and tested.

Precision: with `precision="fp16"` the builder may use FP16 kernels everywhere except the
tensors the exporter marked (`onnx_export.mark_fp32_tensors`: the demodulation, every
normalisation, the per-sample style vectors), which are pinned to float32; the mapping network
is always built in float32. TensorRT 10.12 deprecates this "weakly typed" mode and TensorRT 11
removes it; there, FP16 builds are refused with a clear message and float32 ones still work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lbrgm_fast.export.onnx_export import GraphSpec, fp32_tensors, graph_spec

__all__ = [
    "BuildOptions",
    "TensorRTUnavailable",
    "build_engine",
    "build_engines",
    "current_engine_key",
    "engine_key",
    "profile_shapes",
    "tensorrt_problem",
]

Precision = Literal["fp32", "fp16"]
_WORKSPACE_BYTES = 4 << 30
# The mapping network is a few small matrix products on per-sample vectors: never worth FP16.
_ALWAYS_FP32 = frozenset({"mapping"})


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU for it) is not available on this machine."""


def tensorrt_problem() -> str | None:
    """Why TensorRT engines cannot be built or run here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'lbrgm-fast[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and torch sees none"
    return None


def engine_key(gpu_name: str, compute_capability: tuple[int, int], tensorrt_version: str) -> str:
    """The key engines are stored under: GPU model, compute capability and TensorRT version,
    e.g. 'nvidia-h100-80gb-hbm3-sm90-trt10.3.0'. An engine only runs where all three match."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    major, minor = compute_capability
    return f"{slug}-sm{major}{minor}-trt{tensorrt_version}"


def current_engine_key(device_index: int = 0) -> str:
    """`engine_key` of this machine's GPU and TensorRT (raises TensorRTUnavailable)."""
    problem = tensorrt_problem()
    if problem:
        raise TensorRTUnavailable(problem)
    import tensorrt as trt
    import torch

    return engine_key(torch.cuda.get_device_name(device_index), torch.cuda.get_device_capability(device_index), trt.__version__)


@dataclass(frozen=True)
class BuildOptions:
    """How engines are built.

    Attributes:
        precision: "fp32", or "fp16" with the marked tensors kept in float32.
        max_batch: Largest batch the optimisation profiles accept (smallest: 1).
        opt_batch: Batch the kernels are tuned for (the candidate-scoring batch).
        resolution: The generator's image side: largest (and tuned-for) image size of φ.
        min_side: Smallest image side φ's profile accepts (super-resolution observations).
    """

    precision: Precision = "fp16"
    max_batch: int = 16
    opt_batch: int = 8
    resolution: int = 1024
    min_side: int = 8


def profile_shapes(spec: GraphSpec, options: BuildOptions, graph: str) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """(min, opt, max) shape of every input: the batch from 1 to max_batch (tuned for
    opt_batch, or 1 for the per-batch LPIPS monitor), image sides of φ from min_side to the
    generator's resolution."""
    opt_batch = 1 if graph == "lpips" else min(options.opt_batch, options.max_batch)
    symbols = {
        "batch": (1, opt_batch, options.max_batch),
        "height": (options.min_side, options.resolution, options.resolution),
        "width": (options.min_side, options.resolution, options.resolution),
    }
    shapes: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for name, dims in spec.inputs.items():
        triple: tuple[list[int], list[int], list[int]] = ([], [], [])
        for dim in dims:
            if isinstance(dim, str) and dim not in symbols:
                raise ValueError(f"input {name} of the {graph} graph has an unknown dynamic dimension {dim!r}")
            low, opt, high = symbols[dim] if isinstance(dim, str) else (dim, dim, dim)
            triple[0].append(low)
            triple[1].append(opt)
            triple[2].append(high)
        shapes[name] = triple
    return shapes


def build_engine(
    onnx_bytes: bytes,
    graph: str,
    options: BuildOptions,
    timing_cache: bytes | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[bytes, bytes]:
    """Build one serialized engine from an ONNX graph; returns (engine, updated timing cache).

    Raises TensorRTUnavailable without TensorRT or a GPU, RuntimeError if parsing or building
    fails (with TensorRT's first error message).
    """
    problem = tensorrt_problem()
    if problem:
        raise TensorRTUnavailable(problem)
    import tensorrt as trt

    precision = "fp32" if graph in _ALWAYS_FP32 else options.precision
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} builds only strongly typed networks; FP16 engines with float32 "
            "normalisation need TensorRT 10 (build the plan with --precision fp32)"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network has an explicit batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse the {graph} graph: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(graph_spec(onnx_bytes), options, graph).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32(network, fp32_tensors(onnx_bytes), trt)
        if log is not None:
            log(f"{graph}: {pinned} of {network.num_layers} TensorRT layers pinned to float32")
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build the {graph} engine (see its log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _pin_fp32(network: Any, tensors: set[str], trt: Any) -> int:
    """Constrain every layer that produces a marked tensor to float32 compute and output.

    The ONNX parser names each layer's output tensor after the ONNX value it implements, so the
    exporter's marks (ONNX tensor names) find their layers; helper layers the parser adds
    (constants, shape arithmetic) carry no ONNX name and are left to the builder.
    """
    # Only layers that compute: a pinned shuffle, gather or slice would change no value and
    # only cost a conversion.
    computing = {trt.LayerType.ELEMENTWISE, trt.LayerType.UNARY, trt.LayerType.REDUCE,
                 trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.ACTIVATION, trt.LayerType.SCALE}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in computing:
            continue
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        if not any(t.name in tensors for t in outputs):
            continue
        layer.precision = trt.float32
        for k, tensor in enumerate(outputs):
            if tensor.dtype in (trt.float32, trt.float16):  # never retype shape/index tensors
                layer.set_output_type(k, trt.float32)
        pinned += 1
    return pinned


def build_engines(
    graphs: Mapping[str, bytes],
    options: BuildOptions,
    timing_cache: bytes | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, bytes], bytes | None]:
    """Engines for every graph (sharing one timing cache); returns (engines, timing cache)."""
    engines: dict[str, bytes] = {}
    for name, model in graphs.items():
        if log is not None:
            log(f"building the TensorRT {name} engine ({'fp32' if name in _ALWAYS_FP32 else options.precision})")
        engines[name], timing_cache = build_engine(model, name, options, timing_cache, log)
    return engines, timing_cache
