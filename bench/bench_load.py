"""Time and peak memory to load a full-size 1024 config-f generator, in every supported format.

    python bench/bench_load.py [--out bench/results/load.md] [--reps 3] [--threads N] [--workdir DIR]

Run from the repository root. What it does:

1. Builds `GeneratorConfig(z_dim=512, w_dim=512, img_resolution=1024)` (official FFHQ config-f:
   channel_base 32768, channel_max 512, 8 mapping layers, no fp16/clamp) with seeded random
   weights, and writes it in every format `read_checkpoint` accepts into a temporary folder:
   - NVIDIA network pickle: `dict(G, D=None, G_ema, augment_pipe=None, training_set_kwargs)`,
     every module pickled by NVIDIA's persistence mechanism as
     `torch_utils.persistence._reconstruct_persistent_obj(meta)` with the module's `__dict__` as
     state, tensors pickled the way `pickle.dump` of torch modules pickles them
     (`_rebuild_parameter` / `_rebuild_tensor_v2` / `torch.storage._load_from_bytes`), protocol 4.
     G and G_ema are distinct copies, as in a training snapshot (so the file holds two generators).
     Stand-in modules are registered under NVIDIA's module names only while pickling.
   - rosinality: `torch.save({'g_ema': state_dict, 'latent_avg': w_avg})` (convert_weight.py layout).
   - original TensorFlow pickle: `(G, D, Gs)` of `dnnlib.tflib.network.Network` states with
     variables in TF conventions (HWIO, flipped Conv0_up, mod_bias - 1, dense [in, out]); G and Gs
     hold full generators, D is an empty network (a real file also holds a ~29M-parameter D).
   - lbrgm (safetensors), written by `save_lbrgm` from what `read_checkpoint` made of the NVIDIA
     pickle.
   (Written by a worker subprocess; the orchestrating process never imports torch, because a child
   inherits its parent's RSS high-water mark in ru_maxrss through fork + exec.)
2. For each format and repetition, a fresh subprocess times one `read_checkpoint`, another fresh
   subprocess one `load_generator`; each reports wall and CPU seconds and its peak RSS
   (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, cross-checked against /proc VmHWM) and the RSS
   after imports (baseline).
   Formats are interleaved within each repetition; medians over repetitions are reported.
   The first `read_checkpoint` of each format is also checked against the original weights.
3. One subprocess loads the lbrgm file and times `G(z)` at 1024, batch 1, float32, under
   `torch.no_grad()` (1 warm-up, median of `--reps`), with its peak RSS.

Threads: unless `--threads` is given, 1 if the 1-minute load average is above 1.5 (shared
machine), else all CPUs. Files are read from the page cache (they were just written).
Without `--out` the Markdown report goes to stdout only. Imports nothing from tests/.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

# The orchestrating process imports neither torch nor numpy and stays small: a child started with
# fork/vfork + exec inherits the parent's RSS high-water mark in ru_maxrss, which would otherwise
# mask the child's own peak. Everything that needs torch runs in worker subprocesses.

SEED = 1024
FORMATS = ("nvidia-pickle", "rosinality", "tensorflow-pickle", "lbrgm")
FILE_NAMES = {
    "nvidia-pickle": "network-snapshot-ffhq1024.pkl",
    "rosinality": "rosinality-ffhq1024.pt",
    "tensorflow-pickle": "stylegan2-ffhq-config-f-tf.pkl",
    "lbrgm": "ffhq1024.lbrgm",
}
REFERENCE_NAME = "reference-state.safetensors"  # plain safetensors of the original weights
RESULT_TAG = "BENCH_RESULT "


def config_f_1024() -> Any:
    from lbrgm_fast.config import GeneratorConfig

    return GeneratorConfig(z_dim=512, w_dim=512, img_resolution=1024)


# --- random weights ---------------------------------------------------------------------------


def random_state(config: Any, seed: int) -> dict[str, torch.Tensor]:
    """NVIDIA-named float32 state dict of `config` with seeded random values in every tensor."""
    import torch

    from lbrgm_fast.model import Generator

    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in Generator(config).state_dict().items()}  # randn weights
    gen = torch.Generator().manual_seed(seed + 1)
    for key, tensor in state.items():
        if key.endswith("affine.bias"):
            tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=gen))
        elif key.endswith(("bias", "noise_strength")):
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
        elif key == "mapping.w_avg":
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return state


def reference_filter() -> torch.Tensor:
    import torch

    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


# --- NVIDIA network pickle ----------------------------------------------------------------------

_MODULE_SRC = "# stand-in for training/networks.py (the real file embeds ~35 kB of source here)\n" * 400


def _reconstruct_persistent_obj(meta: dict) -> Any:  # pragma: no cover - only named in the pickle
    raise AssertionError("never called: the benchmark only writes pickles")


class _EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict while pickling."""


class _TFNetwork:
    """Stands in for dnnlib.tflib.network.Network while pickling (pickles its state dict)."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def __getstate__(self) -> dict:
        return self._state


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
_EasyDict.__module__, _EasyDict.__qualname__, _EasyDict.__name__ = "dnnlib.util", "EasyDict", "EasyDict"
_TFNetwork.__module__, _TFNetwork.__qualname__, _TFNetwork.__name__ = "dnnlib.tflib.network", "Network", "Network"


class _StandInModules:
    """Register NVIDIA's module names in sys.modules while pickling, so pickle names their globals."""

    def __enter__(self) -> None:
        persistence = types.ModuleType("torch_utils.persistence")
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
        util = types.ModuleType("dnnlib.util")
        util.EasyDict = _EasyDict  # type: ignore[attr-defined]
        network = types.ModuleType("dnnlib.tflib.network")
        network.Network = _TFNetwork  # type: ignore[attr-defined]
        self.modules = {
            "torch_utils": types.ModuleType("torch_utils"),
            "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"),
            "dnnlib.util": util,
            "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
            "dnnlib.tflib.network": network,
        }
        self.saved = {name: sys.modules.get(name) for name in self.modules}
        sys.modules.update(self.modules)

    def __exit__(self, *exc: object) -> None:
        for name, module in self.saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


_NVIDIA_GENERATOR: Any = None


def nvidia_generator_class() -> Any:
    """NVIDIA stylegan2-ada-pytorch's persistent module classes (structure only), defined on first use."""
    global _NVIDIA_GENERATOR
    if _NVIDIA_GENERATOR is not None:
        return _NVIDIA_GENERATOR
    import numpy as np
    import torch

    class _Persistent(torch.nn.Module):
        """A module that pickles like one decorated with NVIDIA's `@persistence.persistent_class`."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self) -> tuple:
            meta = {
                "type": "class",
                "version": 6,
                "module_src": _MODULE_SRC,
                "class_name": type(self).__name__,
                "state": dict(self.__dict__),
            }
            return (_reconstruct_persistent_obj, (meta,))


    def _move_init_bookkeeping_last(module: _Persistent) -> None:
        # NVIDIA's decorator sets _init_args/_init_kwargs after the constructor: keep that order.
        for key in ("_init_args", "_init_kwargs"):
            module.__dict__[key] = module.__dict__.pop(key)


    class FullyConnectedLayer(_Persistent):
        def __init__(self, in_features: int, out_features: int, activation: str = "linear", lr_multiplier: float = 1, bias_init: float = 0, **kw: Any) -> None:
            super().__init__(in_features, out_features, **kw)
            self.activation = activation
            self.weight = torch.nn.Parameter(torch.empty(out_features, in_features))
            self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init)))
            self.weight_gain = np.float64(lr_multiplier / np.sqrt(in_features))
            self.bias_gain = lr_multiplier
            _move_init_bookkeeping_last(self)


    class MappingNetwork(_Persistent):
        def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8) -> None:
            super().__init__(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers)
            self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
            self.w_avg_beta = 0.995
            for i in range(num_layers):
                fc = FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim, activation="lrelu", lr_multiplier=0.01)
                fc._init_kwargs = {"activation": "lrelu", "lr_multiplier": 0.01}
                setattr(self, f"fc{i}", fc)
            self.register_buffer("w_avg", torch.zeros([w_dim]))
            _move_init_bookkeeping_last(self)


    class SynthesisLayer(_Persistent):
        def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1) -> None:
            kwargs: dict[str, Any] = {"w_dim": w_dim, "resolution": resolution}
            if up != 1:
                kwargs |= {"up": up, "resample_filter": [1, 3, 3, 1]}
            super().__init__(in_channels, out_channels, **kwargs, conv_clamp=None, channels_last=False)
            self.resolution, self.up, self.use_noise, self.activation = resolution, up, True, "lrelu"
            self.conv_clamp, self.padding, self.act_gain = None, 1, np.float64(math.sqrt(2))
            self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
            self.affine._init_kwargs = {"bias_init": 1}
            self.register_buffer("resample_filter", reference_filter())
            self.weight = torch.nn.Parameter(torch.empty([out_channels, in_channels, 3, 3]))
            self.register_buffer("noise_const", torch.empty([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
            self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
            _move_init_bookkeeping_last(self)


    class ToRGBLayer(_Persistent):
        def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
            super().__init__(in_channels, out_channels, w_dim=w_dim, conv_clamp=None, channels_last=False)
            self.conv_clamp = None
            self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
            self.affine._init_kwargs = {"bias_init": 1}
            self.weight = torch.nn.Parameter(torch.empty([out_channels, in_channels, 1, 1]))
            self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
            self.weight_gain = np.float64(1 / np.sqrt(in_channels))
            _move_init_bookkeeping_last(self)


    class SynthesisBlock(_Persistent):
        def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, is_last: bool) -> None:
            super().__init__(in_channels, out_channels, w_dim=w_dim, resolution=resolution, img_channels=img_channels,
                             is_last=is_last, use_fp16=False, conv_clamp=None)
            self.in_channels, self.w_dim, self.resolution, self.img_channels = in_channels, w_dim, resolution, img_channels
            self.is_last, self.architecture, self.use_fp16, self.channels_last = is_last, "skip", False, False
            self.register_buffer("resample_filter", reference_filter())
            self.num_conv = self.num_torgb = 0
            if in_channels == 0:
                self.const = torch.nn.Parameter(torch.empty([out_channels, resolution, resolution]))
            else:
                self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2)
                self.num_conv += 1
            self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
            self.num_conv += 1
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim)
            self.num_torgb += 1
            _move_init_bookkeeping_last(self)


    class SynthesisNetwork(_Persistent):
        def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int, channel_max: int) -> None:
            super().__init__(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                             channel_base=channel_base, channel_max=channel_max, num_fp16_res=0, conv_clamp=None)
            self.w_dim, self.img_resolution = w_dim, img_resolution
            self.img_resolution_log2 = int(np.log2(img_resolution))
            self.img_channels = img_channels
            self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
            channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
            self.num_ws = 0
            for res in self.block_resolutions:
                in_ch = channels[res // 2] if res > 4 else 0
                block = SynthesisBlock(in_ch, channels[res], w_dim, res, img_channels, is_last=res == img_resolution)
                self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
                setattr(self, f"b{res}", block)
            _move_init_bookkeeping_last(self)


    class Generator(_Persistent):
        """NVIDIA stylegan2-ada-pytorch `training.networks.Generator`'s pickled structure (no forward)."""

        def __init__(self, config: Any) -> None:
            mapping_kwargs = {"num_layers": config.mapping_layers}
            synthesis_kwargs = {"channel_base": config.channel_base, "channel_max": config.channel_max,
                                "num_fp16_res": config.num_fp16_res, "conv_clamp": config.conv_clamp}
            super().__init__(z_dim=config.z_dim, c_dim=0, w_dim=config.w_dim, img_resolution=config.img_resolution,
                             img_channels=config.img_channels, mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
            self.z_dim, self.c_dim, self.w_dim = config.z_dim, 0, config.w_dim
            self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
            self.synthesis = SynthesisNetwork(config.w_dim, config.img_resolution, config.img_channels,
                                              config.channel_base, config.channel_max)
            self.num_ws = self.synthesis.num_ws
            self.mapping = MappingNetwork(config.z_dim, 0, config.w_dim, self.num_ws, config.mapping_layers)
            _move_init_bookkeeping_last(self)

    _NVIDIA_GENERATOR = Generator
    return Generator


def write_nvidia_pickle(path: Path, config: Any, state: dict[str, torch.Tensor]) -> None:
    Generator = nvidia_generator_class()
    g_ema = Generator(config)
    missing, unexpected = g_ema.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("resample_filter") for k in missing), (missing, unexpected)
    g_ema = g_ema.eval().requires_grad_(False)
    g = Generator(config)  # a training snapshot's G: same shapes, its own storage (deepcopy would reduce)
    g.load_state_dict(state, strict=False)
    g = g.eval().requires_grad_(False)
    data = {"G": g, "D": None, "G_ema": g_ema, "augment_pipe": None,
            "training_set_kwargs": _EasyDict(resolution=config.img_resolution)}
    with _StandInModules(), open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=4)


# --- rosinality .pt ------------------------------------------------------------------------------


def rosinality_state(config: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of lbrgm_fast.checkpoints.rosinality._translate (rosinality's own key order)."""
    out: dict[str, torch.Tensor] = {}
    kernel = reference_filter() * 4
    for i in range(config.mapping_layers):
        out[f"style.{i + 1}.weight"] = state[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = state[f"mapping.fc{i}.bias"]
    out["input.input"] = state["synthesis.b4.const"][None]

    def conv(src: str, dst: str, up: bool) -> None:
        out[f"{dst}.conv.weight"] = state[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = state[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = state[f"{src}.affine.bias"]
        if up:
            out[f"{dst}.conv.blur.kernel"] = kernel.clone()
        out[f"{dst}.noise.weight"] = state[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = state[f"{src}.bias"]

    def torgb(src: str, dst: str, up: bool) -> None:
        out[f"{dst}.bias"] = state[f"{src}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{dst}.upsample.kernel"] = kernel.clone()
        out[f"{dst}.conv.weight"] = state[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = state[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = state[f"{src}.affine.bias"]

    conv("synthesis.b4.conv1", "conv1", up=False)
    torgb("synthesis.b4.torgb", "to_rgb1", up=False)
    resolutions = config.block_resolutions[1:]
    for k, res in enumerate(resolutions):
        conv(f"synthesis.b{res}.conv0", f"convs.{2 * k}", up=True)
        conv(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", up=False)
    for k, res in enumerate(resolutions):
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}", up=True)
    out["noises.noise_0"] = state["synthesis.b4.conv1.noise_const"][None, None]
    for k, res in enumerate(resolutions):
        out[f"noises.noise_{2 * k + 1}"] = state[f"synthesis.b{res}.conv0.noise_const"][None, None]
        out[f"noises.noise_{2 * k + 2}"] = state[f"synthesis.b{res}.conv1.noise_const"][None, None]
    return {k: v.clone().contiguous() for k, v in out.items()}


def write_rosinality(path: Path, config: Any, state: dict[str, torch.Tensor]) -> None:
    import torch

    torch.save({"g_ema": rosinality_state(config, state), "latent_avg": state["mapping.w_avg"].clone()}, path)


# --- original TensorFlow pickle --------------------------------------------------------------------


def _np(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    import numpy as np
    import torch

    array = tensor.numpy() if isinstance(tensor, torch.Tensor) else tensor
    return np.array(array, dtype=np.float32, order="C", copy=True)  # C-ordered, as TF's session.run gives; keeps 0-d


def tensorflow_networks(config: Any, state: dict[str, torch.Tensor]) -> tuple[Any, Any, Any]:
    """(G, D, Gs) TF network states; inverse of lbrgm_fast.checkpoints.tensorflow._convert."""
    import math
    flat = {k: v.numpy() for k, v in state.items()}

    def generator() -> _TFNetwork:  # a fresh set of arrays each call: G and Gs are distinct in real files
        mapping = []
        for i in range(config.mapping_layers):
            mapping += [(f"Dense{i}/weight", _np(flat[f"mapping.fc{i}.weight"].T)),
                        (f"Dense{i}/bias", _np(flat[f"mapping.fc{i}.bias"]))]
        synthesis = [("4x4/Const/const", _np(flat["synthesis.b4.const"][None]))]
        noises = []

        def layer(prefix: str, scope: str, noise: int, flip: bool) -> None:
            weight = flat[f"{prefix}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            synthesis.extend([
                (f"{scope}/weight", _np(weight[::-1, ::-1] if flip else weight)),
                (f"{scope}/mod_weight", _np(flat[f"{prefix}.affine.weight"].T)),
                (f"{scope}/mod_bias", _np(flat[f"{prefix}.affine.bias"] - 1)),
                (f"{scope}/noise_strength", _np(flat[f"{prefix}.noise_strength"])),
                (f"{scope}/bias", _np(flat[f"{prefix}.bias"])),
            ])
            noises.append((f"noise{noise}", _np(flat[f"{prefix}.noise_const"][None, None])))

        for res in config.block_resolutions:
            if res == 4:
                layer("synthesis.b4.conv1", "4x4/Conv", 0, False)
            else:
                log2 = int(math.log2(res))
                layer(f"synthesis.b{res}.conv0", f"{res}x{res}/Conv0_up", 2 * log2 - 5, True)
                layer(f"synthesis.b{res}.conv1", f"{res}x{res}/Conv1", 2 * log2 - 4, False)
            rgb = f"synthesis.b{res}.torgb"
            synthesis.extend([
                (f"{res}x{res}/ToRGB/weight", _np(flat[f"{rgb}.weight"].transpose(2, 3, 1, 0))),
                (f"{res}x{res}/ToRGB/mod_weight", _np(flat[f"{rgb}.affine.weight"].T)),
                (f"{res}x{res}/ToRGB/mod_bias", _np(flat[f"{rgb}.affine.bias"] - 1)),
                (f"{res}x{res}/ToRGB/bias", _np(flat[f"{rgb}.bias"])),
            ])
        return net("G", [("dlatent_avg", _np(flat["mapping.w_avg"]))], {
            "mapping": net("G_mapping", mapping, {}),
            "synthesis": net("G_synthesis", noises + synthesis, {}),
        })

    # What stylegan2's run_training.py passes for config-f; other sizes only where not TF's default.
    kwargs = {"num_channels": config.img_channels, "resolution": config.img_resolution, "label_size": 0,
              "fmap_base": config.channel_base // 2}  # TF counts channels from stage log2(r) - 1
    for key, value, default in (("latent_size", config.z_dim, 512), ("dlatent_size", config.w_dim, 512),
                                ("mapping_fmaps", config.w_dim, 512), ("mapping_layers", config.mapping_layers, 8),
                                ("fmap_max", config.channel_max, 512)):
        if value != default:
            kwargs[key] = value

    def net(name: str, variables: list, components: dict) -> _TFNetwork:
        return _TFNetwork({
            "version": 4, "name": name, "static_kwargs": dict(kwargs), "components": dict(components),
            "build_module_src": "# stand-in for training/networks_stylegan2.py\n" * 400,
            "build_func_name": {"G": "G_main", "D": "D_stylegan2"}.get(name, name),
            "variables": variables,
        })

    return generator(), net("D", [], {}), generator()


def write_tensorflow(path: Path, config: Any, state: dict[str, torch.Tensor]) -> None:
    networks = tensorflow_networks(config, state)
    with _StandInModules(), open(path, "wb") as handle:
        pickle.dump(networks, handle, protocol=4)  # dnnlib's save_pkl: HIGHEST_PROTOCOL of Python 3.6


# --- building all files ------------------------------------------------------------------------------


def write_all(folder: Path, seed: int) -> dict[str, Any]:
    """Write the reference weights and every format into `folder` (runs in a worker subprocess)."""
    import safetensors.torch

    from lbrgm_fast.checkpoints import expected_shapes, read_checkpoint, save_lbrgm

    config = config_f_1024()
    state = random_state(config, seed)
    safetensors.torch.save_file(state, folder / REFERENCE_NAME)
    paths = {fmt: folder / name for fmt, name in FILE_NAMES.items()}
    for fmt, writer in (("nvidia-pickle", write_nvidia_pickle), ("rosinality", write_rosinality),
                        ("tensorflow-pickle", write_tensorflow)):
        start = time.perf_counter()
        writer(paths[fmt], config, state)
        print(f"wrote {fmt:18s} {paths[fmt].stat().st_size / 2**20:8.1f} MiB in {time.perf_counter() - start:5.1f} s",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    save_lbrgm(read_checkpoint(paths["nvidia-pickle"]), paths["lbrgm"])
    print(f"wrote {'lbrgm':18s} {paths['lbrgm'].stat().st_size / 2**20:8.1f} MiB in {time.perf_counter() - start:5.1f} s "
          "(read_checkpoint of the NVIDIA pickle + save_lbrgm)", file=sys.stderr, flush=True)
    return {"n_values": sum(math.prod(shape) for shape in expected_shapes(config).values())}


# --- subprocess workers -------------------------------------------------------------------------------


def _memory_mib() -> dict[str, float]:
    """Current RSS, peak RSS (ru_maxrss, as asked) and the kernel's VmHWM (cross-check), in MiB."""
    status = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                status[key] = int(value.split()[0]) / 1024  # kB
    return {"rss": status["VmRSS"], "hwm": status["VmHWM"],
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def _max_abs_diff(state: dict[str, torch.Tensor], reference: Path) -> float:
    import safetensors.torch

    ref = safetensors.torch.load_file(reference)
    if set(ref) != set(state):
        return math.inf
    return max(float((state[k].float() - ref[k]).abs().max()) if ref[k].numel() else 0.0 for k in ref)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__}
    if args.worker == "write":
        return result | write_all(Path(args.path), args.seed)

    import lbrgm_fast.model  # noqa: F401  (load_generator imports it lazily; keep that out of the timing)
    from lbrgm_fast.checkpoints import load_generator, read_checkpoint

    result["baseline"] = _memory_mib()
    if args.worker in ("read", "load"):
        call = read_checkpoint if args.worker == "read" else load_generator
        wall, cpu = time.perf_counter(), time.process_time()
        obj = call(args.path)
        result["wall_s"], result["cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
        result["after"] = _memory_mib()
        if args.worker == "read":
            result["format"] = obj.format
        if args.verify:  # after the measurements: loading the reference must not count
            state = obj.state_dict if args.worker == "read" else obj.state_dict()
            result["max_abs_diff"] = _max_abs_diff(state, Path(args.reference))
        return result

    # forward
    generator = load_generator(args.path)
    result["after_load"] = _memory_mib()
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(SEED))
    times, cpus = [], []
    with torch.no_grad():
        for i in range(args.reps + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            img = generator(z)
            if i:  # the first call is the warm-up
                times.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
    result["wall_s"], result["cpu_s"] = times, cpus
    result["after"] = _memory_mib()
    result["shape"], result["finite"] = list(img.shape), bool(torch.isfinite(img).all())
    result["img_std"] = float(img.std())
    return result


def run_worker(kind: str, path: Path, threads: int, seed: int = SEED, reps: int = 1,
               reference: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--path", str(path),
           "--threads", str(threads), "--reps", str(reps), "--seed", str(seed)]
    if reference is not None:
        cmd += ["--verify", "--reference", str(reference)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    loadavg = os.getloadavg()[0]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if kind == "write" else subprocess.PIPE,
                          text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {path.name} failed (rc {proc.returncode}):\n{(proc.stderr or '')[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["loadavg_before"] = loadavg
    return result


# --- report ----------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    info = {"cpu": platform.processor() or "?", "cores": str(os.cpu_count()), "ram": "?"}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            elif key.strip() == "CPU(s)":
                info["cores"] = value.strip()
            elif key.strip() == "Thread(s) per core":
                info["threads_per_core"] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return info


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(args: argparse.Namespace, command: str, info: dict[str, str], written: dict[str, Any],
           sizes: dict[str, int], loads: dict[str, dict[str, list[dict]]], forward: dict[str, Any], threads: int,
           load_start: tuple[float, float, float], load_end: tuple[float, float, float], load_max: float,
           started: datetime.datetime, elapsed: float) -> str:
    n_values = written["n_values"]
    all_runs = [r for kinds in loads.values() for runs in kinds.values() for r in runs] + [forward]
    hwm_gap = max(abs(r["after"]["maxrss"] - r["after"]["hwm"]) for r in all_runs)
    lines = [
        "# Loading a full-size 1024 config-f generator on the development CPU",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M %Z').strip()} (run took {elapsed / 60:.1f} min)",
        f"- Machine: {info['cpu']}, {info['cores']} logical CPUs"
        + (f" ({info['threads_per_core']} thread per core)" if "threads_per_core" in info else "")
        + f", {info['ram']} RAM; shared VM, other engineers' jobs running",
        f"- Software: Python {platform.python_version()}, torch {written['torch']}, numpy {written['numpy']}",
        f"- Command: `{command}` (from the repository root)",
        (f"- Torch threads: {threads} (`torch.set_num_threads`); load average (1 min) at start {load_start[0]:.2f} "
        f"(5/15 min {load_start[1]:.2f}/{load_start[2]:.2f}), highest seen before a worker {load_max:.2f}, "
        f"at end {load_end[0]:.2f}"),
        (f"- Generator: z_dim = w_dim = 512, 1024 px, 8 mapping layers, channel_base 32768, channel_max 512, "
        f"num_fp16_res 0, conv_clamp None; {n_values / 1e6:.2f} M values ({n_values * 4 / 2**20:.1f} MiB float32), "
        f"seeded random weights (seed {args.seed})"),
        (f"- Each load number: median over {args.reps} fresh subprocesses (one call each), formats interleaved; "
        "files in the page cache. Peak RSS = `ru_maxrss` of that subprocess, so it includes the interpreter, "
        "torch and lbrgm_fast (baseline column: RSS after those imports, before the call; the 'added' column "
        f"is peak minus baseline). The kernel's VmHWM agreed with ru_maxrss to within {hwm_gap:.0f} MiB in every run."),
        ("- CPU s (process_time) is given next to wall s: with the machine oversubscribed, wall time includes "
        "waiting for a core, and CPU time is closer to what an idle machine would show."),
        "",
        "## Load",
        "",
        ("| format | file MiB | read_checkpoint s (CPU s) | load_generator s (CPU s) "
        "| peak RSS MiB, read (added) | peak RSS MiB, load_generator (added) | baseline RSS MiB |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fmt in FORMATS:
        read, load = loads[fmt]["read"], loads[fmt]["load"]
        base = median([r["baseline"]["rss"] for r in read + load])
        peak_read = median([r["after"]["maxrss"] for r in read])
        peak_load = median([r["after"]["maxrss"] for r in load])
        added_read = median([r["after"]["maxrss"] - r["baseline"]["rss"] for r in read])
        added_load = median([r["after"]["maxrss"] - r["baseline"]["rss"] for r in load])
        lines.append(
            f"| {fmt} | {sizes[fmt] / 2**20:.1f} "
            f"| {median([r['wall_s'] for r in read]):.2f} ({median([r['cpu_s'] for r in read]):.2f}) "
            f"| {median([r['wall_s'] for r in load]):.2f} ({median([r['cpu_s'] for r in load]):.2f}) "
            f"| {peak_read:.0f} (+{added_read:.0f}) | {peak_load:.0f} (+{added_load:.0f}) | {base:.0f} |"
        )
    lines += ["", "All runs (wall s / CPU s / peak RSS MiB), in order:", ""]
    for fmt in FORMATS:
        for kind in ("read", "load"):
            runs = ", ".join(f"{r['wall_s']:.2f} / {r['cpu_s']:.2f} / {r['after']['maxrss']:.0f}" for r in loads[fmt][kind])
            lines.append(f"- {fmt}, {'read_checkpoint' if kind == 'read' else 'load_generator'}: {runs}")
    checks = ", ".join(f"{fmt} {loads[fmt]['read'][0]['max_abs_diff']:.1e}" for fmt in FORMATS)
    lines += ["", f"Check, max |read_checkpoint state - original weights| (first read of each file): {checks}.", ""]
    lines += [
        "## Forward pass",
        "",
        ("`G(z)` at 1024, batch 1, float32, `torch.no_grad()`, noise_mode 'const', generator loaded with "
        f"`load_generator` from the lbrgm file in the same subprocess; 1 warm-up, then {args.reps} timed calls."),
        "",
        "| forward s, median (CPU s) | timed runs s | RSS after load MiB | peak RSS MiB (load + forward) | added by forward MiB |",
        "|---:|---|---:|---:|---:|",
        (f"| {median(forward['wall_s']):.2f} ({median(forward['cpu_s']):.2f}) "
        f"| {', '.join(f'{t:.2f}' for t in forward['wall_s'])} | {forward['after_load']['rss']:.0f} "
        f"| {forward['after']['maxrss']:.0f} | +{forward['after']['maxrss'] - forward['after_load']['rss']:.0f} |"),
        "",
        f"Output {forward['shape']}, finite: {forward['finite']}, std {forward['img_std']:.3g}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout only)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 if load average > 1.5, else all CPUs)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--workdir", type=Path, help="write the checkpoint files here and keep them (default: a temporary folder)")
    parser.add_argument("--worker", choices=("write", "read", "load", "forward"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(RESULT_TAG + json.dumps(worker(args)), flush=True)
        return
    assert "torch" not in sys.modules, "the orchestrating process must stay small (see the note on ru_maxrss)"

    command = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    threads = args.threads or (1 if load_start[0] > 1.5 else len(os.sched_getaffinity(0)))
    print(f"load average {load_start[0]:.2f}; using {threads} torch thread(s)", flush=True)
    info = machine_info()

    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        written = run_worker("write", folder, threads, seed=args.seed)
        paths = {fmt: folder / name for fmt, name in FILE_NAMES.items()}
        reference = folder / REFERENCE_NAME
        sizes = {fmt: path.stat().st_size for fmt, path in paths.items()}
        loads: dict[str, dict[str, list[dict]]] = {fmt: {"read": [], "load": []} for fmt in FORMATS}
        for rep in range(args.reps):
            for fmt in FORMATS:
                for kind in ("read", "load"):
                    verify = reference if (rep == 0 and kind == "read") else None
                    result = run_worker(kind, paths[fmt], threads, reference=verify)
                    if kind == "read" and result["format"] != fmt:
                        raise RuntimeError(f"{paths[fmt].name} was read as {result['format']}, expected {fmt}")
                    loads[fmt][kind].append(result)
                    after, base = result["after"], result["baseline"]
                    print(f"rep {rep} {fmt:18s} {kind:4s} {result['wall_s']:6.2f} s (CPU {result['cpu_s']:5.2f}) "
                          f"peak {after['maxrss']:5.0f} MiB (VmHWM {after['hwm']:5.0f}, baseline {base['rss']:4.0f}) "
                          f"load avg {result['loadavg_before']:.2f}"
                          + (f" max|diff| {result['max_abs_diff']:.1e}" if "max_abs_diff" in result else ""), flush=True)
        forward = run_worker("forward", paths["lbrgm"], threads, reps=args.reps)
        print(f"forward {[round(t, 2) for t in forward['wall_s']]} s (CPU {[round(t, 2) for t in forward['cpu_s']]}), "
              f"peak {forward['after']['maxrss']:.0f} MiB", flush=True)

    load_max = max([r["loadavg_before"] for kinds in loads.values() for runs in kinds.values() for r in runs]
                   + [forward["loadavg_before"]])
    text = report(args, command, info, written, sizes, loads, forward, threads, load_start, os.getloadavg(),
                  load_max, started, time.perf_counter() - t0)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
