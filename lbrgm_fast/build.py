"""`lbrgm-fast build`: a checkpoint and the perceptual weights -> one engine plan file."""

from __future__ import annotations

import datetime
import platform
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import safetensors.torch
import torch

from lbrgm_fast.checkpoints import read_checkpoint, save_lbrgm
from lbrgm_fast.errors import UserError, WeightsNotFoundError
from lbrgm_fast.model import Generator
from lbrgm_fast.notes import NoteReporter, SilentNotes
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.plan import FORMAT, VERSION, write_plan

__all__ = ["build_plan", "tensorrt_engine_members"]

Precision = Literal["fp32", "fp16"]


def _versions() -> dict[str, str | None]:
    import onnxruntime

    import lbrgm_fast

    try:
        import tensorrt

        trt_version: str | None = tensorrt.__version__
    except ImportError:
        trt_version = None
    return {
        "lbrgm_fast": lbrgm_fast.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tensorrt": trt_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _torchvision_tensors(convs: dict[int, torch.nn.Conv2d]) -> dict[str, torch.Tensor]:
    """Conv weights under torchvision's `features.N.*` keys, the form φ and the monitor load."""
    out: dict[str, torch.Tensor] = {}
    for index, conv in convs.items():
        out[f"features.{index}.weight"] = conv.weight.detach().float().contiguous().clone()
        out[f"features.{index}.bias"] = conv.bias.detach().float().contiguous().clone()
    return out


def _vgg_tensors(perceptual: VGG16Features) -> dict[str, torch.Tensor]:
    # VGG16Features.layers keeps torchvision's indices (layers.N <-> features.N).
    return _torchvision_tensors({i: m for i, m in enumerate(perceptual.layers) if isinstance(m, torch.nn.Conv2d)})


def _alexnet_tensors(monitor: LpipsAlex) -> dict[str, torch.Tensor]:
    # lpips names the children of its slices by torchvision's `features` index.
    convs = {}
    for block in monitor.lpips.net.children():
        for index, module in block.named_children():
            if isinstance(module, torch.nn.Conv2d):
                convs[int(index)] = module
    return _torchvision_tensors(convs)


def _generator_bytes(checkpoint) -> bytes:
    """The generator as an lbrgm-generator safetensors file (readable by read_checkpoint too)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generator.safetensors"
        save_lbrgm(checkpoint, path)
        return path.read_bytes()


def _load_perceptual(
    vgg16: str | Path | None,
    alexnet: str | Path | None,
    random_seed: int | None,
    resolution: int,
    reporter: NoteReporter,
) -> tuple[VGG16Features, LpipsAlex | None, dict, dict | None]:
    """φ, the monitor (None if AlexNet is unavailable and was not asked for) and their manifest entries."""
    if random_seed is not None:
        reporter.note(f"perceptual and monitor backbones are RANDOM (seed {random_seed}): for tests and demos only")
        entry = {"weights": "random", "seed": random_seed}
        return (
            VGG16Features.random(random_seed, resolution=resolution),
            LpipsAlex.random(random_seed + 1),
            {**entry, "resolution": resolution},
            {"weights": "random", "seed": random_seed + 1},
        )
    from lbrgm_fast.weights import Backbone, load_backbone

    def entry(loaded: Backbone) -> dict[str, Any]:
        """The manifest's record of a backbone: official torchvision weights or another file of
        their layout (`info` and `run --engine` then say its numbers are not the published LPIPS)."""
        if loaded.note is not None:
            reporter.note(loaded.note)
        return {"weights": "torchvision" if loaded.official else "unofficial", "seed": None, "sha256": loaded.sha256}

    vgg = load_backbone("vgg16", vgg16)
    perceptual = VGG16Features.from_torchvision_state_dict(vgg.state_dict, resolution=resolution)
    try:
        alex = load_backbone("alexnet", alexnet)
    except WeightsNotFoundError as exc:
        if alexnet is not None:
            raise
        reporter.note(f"the plan has no LPIPS(alex) monitor ({exc})")
        return perceptual, None, {**entry(vgg), "resolution": resolution}, None
    monitor = LpipsAlex.from_torchvision_state_dict(alex.state_dict)
    return perceptual, monitor, {**entry(vgg), "resolution": resolution}, entry(alex)


def build_plan(
    checkpoint: str | Path,
    output: str | Path,
    vgg16: str | Path | None = None,
    alexnet: str | Path | None = None,
    tensorrt: bool = False,
    max_batch: int = 16,
    precision: Precision = "fp32",
    reporter: NoteReporter | None = None,
    *,
    random_perceptual_seed: int | None = None,
    perceptual_resolution: int = 256,
) -> Path:
    """Build an engine plan: everything `run --engine` needs in one file (docs/plan-format.md).

    Args:
        checkpoint: Any supported generator checkpoint.
        output: The plan file to write (atomically; an existing file is replaced).
        vgg16: torchvision VGG16 weights (default: torch hub's cache, downloading if needed).
        alexnet: torchvision AlexNet weights for the LPIPS monitor (default: the cache; the plan
            has no monitor when they are not available and this was not given).
        tensorrt: Also build TensorRT engines for this machine's GPU (skipped, with a note,
            where TensorRT or a GPU is missing: `run` builds them on first use instead).
        max_batch: Largest batch the TensorRT optimisation profiles accept.
        precision: Precision of the TensorRT engines ("fp16" keeps the demodulation and the
            normalisations in float32). The ONNX graphs are always float32.
        reporter: Receives one-line progress notes.
        random_perceptual_seed: Use seeded random VGG16/AlexNet backbones instead of pretrained
            weights (offline tests and demos; the manifest and `info` say so).
        perceptual_resolution: Side φ resizes images to (256, as the published method).

    Raises:
        UserError: a bad option, an unreadable checkpoint or weights file, an unwritable output.
    """
    from lbrgm_fast.export.onnx_export import (
        OPSET,
        export_features,
        export_lpips,
        export_mapping,
        export_synthesis,
        graph_spec,
    )

    reporter = reporter or SilentNotes()
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    if precision not in ("fp32", "fp16"):
        raise UserError(f"--precision must be fp32 or fp16, got {precision!r}")
    output = Path(output)
    if not output.parent.is_dir():
        raise UserError(f"cannot write plan '{output}': folder {output.parent} does not exist")

    ckpt = read_checkpoint(checkpoint)
    generator = Generator.from_state_dict(ckpt.config, ckpt.state_dict)
    perceptual, monitor, perceptual_entry, monitor_entry = _load_perceptual(
        vgg16, alexnet, random_perceptual_seed, perceptual_resolution, reporter
    )

    members: dict[str, bytes] = {
        "generator.safetensors": _generator_bytes(ckpt),
        "vgg16.safetensors": safetensors.torch.save(_vgg_tensors(perceptual), metadata={"network": "vgg16"}),
    }
    exports = {
        "mapping": lambda: export_mapping(generator),
        "synthesis": lambda: export_synthesis(generator),
        "features": lambda: export_features(perceptual),
    }
    if monitor is not None:
        members["alexnet.safetensors"] = safetensors.torch.save(_alexnet_tensors(monitor), metadata={"network": "alexnet"})
        exports["lpips"] = lambda: export_lpips(monitor, ckpt.config.img_resolution)
    graphs: dict[str, bytes] = {}
    for name, export in exports.items():
        reporter.note(f"exporting the {name} graph (ONNX opset {OPSET})")
        graphs[name] = export()
        members[f"onnx/{name}.onnx"] = graphs[name]

    tensorrt_entries: dict[str, dict] = {}
    if tensorrt:
        tensorrt_entries = tensorrt_engine_members(graphs, precision, max_batch, ckpt.config.img_resolution, members, reporter)

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_sha256": ckpt.sha256,
        "generator": {
            "file": "generator.safetensors",
            "config": ckpt.config.to_dict(),
            "source_format": ckpt.format,
            "source_name": Path(checkpoint).name,
            "has_w_avg": ckpt.has_w_avg,
        },
        "perceptual": {"file": "vgg16.safetensors", "network": "vgg16", **perceptual_entry},
        "monitor": None if monitor_entry is None else {"file": "alexnet.safetensors", "network": "alexnet", **monitor_entry},
        "precision": {"onnx": "fp32", "tensorrt": precision, "fp32_always": "demodulation, normalisations, mapping network, style vectors"},
        "max_batch": max_batch,
        "versions": _versions(),
        "graphs": {name: {"file": f"onnx/{name}.onnx", "opset": OPSET, **graph_spec(data).to_dict()} for name, data in graphs.items()},
        "tensorrt": tensorrt_entries,
    }
    write_plan(output, manifest, members)
    reporter.note(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return output


def tensorrt_engine_members(
    graphs: dict[str, bytes],
    precision: Precision,
    max_batch: int,
    resolution: int,
    members: dict[str, bytes],
    reporter: NoteReporter,
) -> dict[str, dict]:
    """Build this machine's TensorRT engines into `members`; returns the manifest's `tensorrt`
    section ({} with a note when TensorRT or a GPU is missing or the build fails)."""
    from lbrgm_fast.export.tensorrt_build import (
        BuildOptions,
        build_engines,
        current_engine_key,
        tensorrt_problem,
    )

    problem = tensorrt_problem()
    if problem:
        reporter.note(f"no TensorRT engines in the plan: {problem}; `run --forward-backend tensorrt` builds them where TensorRT is installed")
        return {}
    import tensorrt as trt

    key = current_engine_key()
    options = BuildOptions(precision=precision, max_batch=max_batch, resolution=resolution)
    try:
        engines, _ = build_engines(graphs, options, log=reporter.note)
    except RuntimeError as exc:
        reporter.note(f"no TensorRT engines in the plan: {str(exc).splitlines()[0]}")
        return {}
    files = {}
    for name, engine in engines.items():
        files[name] = f"tensorrt/{key}/{name}.engine"
        members[files[name]] = engine
    return {
        key: {
            "gpu": torch.cuda.get_device_name(),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "tensorrt": trt.__version__,
            "precision": precision,
            "max_batch": max_batch,
            "engines": files,
        }
    }

