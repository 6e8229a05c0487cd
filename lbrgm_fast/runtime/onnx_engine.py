"""ONNX Runtime forward engine: the plan's ONNX graphs on the CPU, CUDA or TensorRT provider.

Inputs and outputs are bound by pointer to torch tensors (IOBinding) on every provider, so a
call neither copies through numpy nor, on a GPU, through the host: outputs are preallocated torch
tensors on the input's device whose shapes come from the graph (its symbolic dimensions are
resolved from the inputs' sizes).

Graphs may come from a stranger's plan. `read_plan` has checked them (self-contained standard
ONNX, lbrgm_fast/plan_checks.py) and `Plan.onnx` hands out only those bytes; the session
options below are defence in depth behind that check (`_guarded_options`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.plan import GRAPHS

if TYPE_CHECKING:
    import onnxruntime

    from lbrgm_fast.plan import Plan

Provider = Literal["cpu", "cuda", "tensorrt"]
_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# ONNX Runtime session config keys (include/onnxruntime/core/session/
# onnxruntime_session_options_config_keys.h), both honoured by onnxruntime 1.32 (tested in
# tests/test_plan_trust.py); a version that does not know a key ignores it.
_LOAD_MODEL_FORMAT = "session.load_model_format"
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def provider_problem(provider: Provider, device: torch.device) -> str | None:
    """Why `provider` cannot run on `device` here (None when it can)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if provider == "cpu":
        return None if device.type == "cpu" else "the CPU provider cannot work on CUDA tensors"
    if device.type != "cuda":
        return f"the {provider} provider needs a CUDA device"
    if _PROVIDER_NAMES[provider] not in ort.get_available_providers():
        return f"this onnxruntime has no {_PROVIDER_NAMES[provider]} (install onnxruntime-gpu)"
    return None


def _explicit(device: torch.device) -> torch.device:
    """cuda -> cuda:N (the current device), so that tensors' devices compare equal to it."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _guarded_options(empty_folder: str, threads: int | None) -> onnxruntime.SessionOptions:
    """Session options that read a graph as plain ONNX and nothing beside it.

    * `session.load_model_format = ONNX`: the bytes are parsed as the ONNX protobuf the plan's
      checks read, never sniffed as ONNX Runtime's own flatbuffer format (which they do not read).
    * `session.model_external_initializers_file_folder_path` = an empty folder: external data a
      graph might still name resolves inside it and is not found (onnxruntime 1.32 refuses
      locations that leave the folder; without the key it resolves them against the working
      directory).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are about graph internals
    options.add_session_config_entry(_LOAD_MODEL_FORMAT, "ONNX")
    options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, empty_folder)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class _Session:
    """One graph's InferenceSession, run through IOBinding on torch tensors."""

    def __init__(
        self,
        model: bytes,
        device: torch.device,
        providers: list[tuple[str, dict[str, str]]],
        threads: int | None,
    ) -> None:
        import onnxruntime as ort

        self.device = device
        # On a GPU, ORT gets a stream of its own (torch's default stream has the handle 0, which
        # ORT does not accept as a user stream); `run` orders it after and before torch's
        # current stream, so nothing waits on the host.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self.stream is not None:
            stream = {"has_user_compute_stream": "1", "user_compute_stream": str(self.stream.cuda_stream)}
            providers = [(name, {**opts, **stream}) for name, opts in providers]
        # External data is only ever read while the session is created.
        with tempfile.TemporaryDirectory(prefix="lbrgm-no-external-data-") as empty:
            options = _guarded_options(empty, threads)
            self.session: onnxruntime.InferenceSession = ort.InferenceSession(model, options, providers=providers)
        self.inputs = [(i.name, list(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]

    def run(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        if len(tensors) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(tensors)}")
        sizes: dict[str, int] = {}
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0  # cpu has no index
        inputs = []
        for (name, dims), tensor in zip(self.inputs, tensors):
            tensor = tensor.detach().to(torch.float32).contiguous()
            if len(dims) != tensor.ndim:
                raise ValueError(f"{name} must have {len(dims)} dimensions, got shape {list(tensor.shape)}")
            for dim, size in zip(dims, tensor.shape):
                if isinstance(dim, str):
                    if sizes.setdefault(dim, size) != size:
                        raise ValueError(f"inputs disagree on dimension {dim!r}: {sizes[dim]} vs {size}")
                elif dim != size:
                    raise ValueError(f"{name} has shape {list(tensor.shape)}, the graph expects {dims}")
            binding.bind_input(name, kind, index, np.float32, list(tensor.shape), tensor.data_ptr())
            inputs.append(tensor)  # keeps the memory alive until the run is over
        outputs = []
        for name, dims in self.outputs:
            shape = [sizes[d] if isinstance(d, str) else d for d in dims]
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, kind, index, np.float32, shape, out.data_ptr())
            outputs.append(out)
        if self.stream is None:
            self.session.run_with_iobinding(binding)
            return outputs
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # the inputs were written on torch's stream
        for tensor in inputs + outputs:
            tensor.record_stream(self.stream)
        self.session.run_with_iobinding(binding)
        current.wait_stream(self.stream)
        return outputs


class OnnxRuntimeEngine:
    """`ForwardEngine` on ONNX Runtime: generate (mapping + synthesis), features (φ), lpips.

    Args:
        graphs: ONNX bytes by name ("mapping", "synthesis", "features", "lpips"); a missing
            graph makes its phase unavailable.
        device: Where inputs and outputs live (cpu, or a CUDA device for the GPU providers).
        provider: "cpu", "cuda" or "tensorrt" (TensorRT provider, CUDA for what it rejects);
            by default cpu on the CPU and cuda on a GPU.
        threads: Intra-op threads for the CPU provider (None: ONNX Runtime's default).
        tensorrt_cache: Folder for the TensorRT provider's engine and timing caches.
        fp16: Let the TensorRT provider use FP16 kernels.
    """

    name = "onnxruntime"

    def __init__(
        self,
        graphs: Mapping[str, bytes],
        device: torch.device | str = "cpu",
        provider: Provider | None = None,
        threads: int | None = None,
        tensorrt_cache: Path | None = None,
        fp16: bool = False,
    ) -> None:
        self.device = _explicit(torch.device(device))
        self.provider: Provider = provider or ("cuda" if self.device.type == "cuda" else "cpu")
        problem = provider_problem(self.provider, self.device)
        if problem:
            raise UserError(f"cannot use onnxruntime here: {problem}")
        unknown = sorted(set(graphs) - set(GRAPHS))
        if unknown:
            raise ValueError(f"unknown graphs {unknown}; expected some of {GRAPHS}")
        self._graphs = dict(graphs)
        self._sessions: dict[str, _Session] = {}
        self._threads = threads
        self._tensorrt_cache = tensorrt_cache
        self._fp16 = fp16
        if self.provider != "cpu":
            self.name = f"onnxruntime-{self.provider}"

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        device: torch.device | str = "cpu",
        provider: Provider | None = None,
        threads: int | None = None,
    ) -> OnnxRuntimeEngine:
        """The engine for a plan's graphs (the TensorRT provider caches next to the plan)."""
        graphs = {name: plan.onnx(name) for name in GRAPHS if plan.has_graph(name)}
        fp16 = plan.manifest["precision"]["tensorrt"] == "fp16"
        return cls(graphs, device, provider, threads, tensorrt_cache=plan.cache_dir / "onnxruntime-tensorrt", fp16=fp16)

    def _providers(self) -> list[tuple[str, dict[str, str]]]:
        if self.provider == "cpu":
            return [("CPUExecutionProvider", {})]
        cuda = {"device_id": str(self.device.index or 0)}
        providers = [("CUDAExecutionProvider", cuda)]
        if self.provider == "tensorrt":
            trt: dict[str, str] = {"device_id": cuda["device_id"], "trt_fp16_enable": "1" if self._fp16 else "0"}
            if self._tensorrt_cache is not None:
                os.makedirs(self._tensorrt_cache, exist_ok=True)
                trt |= {
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": str(self._tensorrt_cache),
                    "trt_timing_cache_enable": "1",
                    "trt_timing_cache_path": str(self._tensorrt_cache),
                }
            providers.insert(0, ("TensorrtExecutionProvider", trt))
        return providers

    def _session(self, name: str) -> _Session:
        if name not in self._sessions:
            if name not in self._graphs:
                raise RuntimeError(f"this engine has no {name} graph")
            self._sessions[name] = _Session(self._graphs[name], self.device, self._providers(), self._threads)
        return self._sessions[name]

    def _check(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            raise ValueError(f"this engine runs on {self.device}, got a tensor on {tensor.device}")

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        (ws,) = self._session("mapping").run(z)
        (images,) = self._session("synthesis").run(ws)
        return images

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._check(images)
        return self._session("features").run(images)

    @torch.no_grad()
    def lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x)
        (distance,) = self._session("lpips").run(x, y)
        return distance


__all__ = ["OnnxRuntimeEngine", "Provider", "provider_problem"]
