"""NVIDIA network pickles (stylegan2-ada-pytorch, and StyleGAN2 from the stylegan3 repository).

The pickle is read by `safe_pickle`, so each network arrives as a `PersistentRecord` whose
`state` is the module's `__dict__`: `_parameters`, `_buffers`, `_modules` (child records) and
`_init_kwargs` (the constructor arguments). We flatten the first three into a state dict and
turn the last into a `GeneratorConfig`.

Two code bases write `class_name == 'Generator'` with different constructor signatures:
- stylegan2-ada-pytorch `training.networks.Generator`: synthesis arguments nested in
  `synthesis_kwargs`; defaults num_fp16_res 0, conv_clamp None.
- stylegan3 `training.networks_stylegan2.Generator`: synthesis arguments flat in the init
  kwargs; defaults num_fp16_res 4, conv_clamp 256.
The embedded source is never executed, but we read it as text to tell these apart when the
kwargs alone cannot, and to recognise StyleGAN3.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lbrgm_fast.checkpoints.checkpoint import ReadResult, as_float32, fail
from lbrgm_fast.checkpoints.layout import check_state_dict, estimate_w_avg, is_reference_filter, make_config
from lbrgm_fast.checkpoints.safe_pickle import PersistentRecord
from lbrgm_fast.config import GeneratorConfig

NETWORKS = ("G_ema", "G")
_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
_MAX_DEPTH = 12  # Generator -> synthesis -> block -> layer -> affine is 5 deep; leave room.


def is_nvidia_network_dict(obj: Any) -> bool:
    """True for the dict an NVIDIA training snapshot pickles (some network as a persistent record)."""
    return isinstance(obj, dict) and any(isinstance(obj.get(k), PersistentRecord) for k in ("G_ema", "G", "D"))


def read_nvidia(obj: Any, source: str, network: str) -> ReadResult:
    """Turn an unpickled NVIDIA snapshot dict into a generator, taking `network` ('G_ema' or 'G')."""
    if network not in NETWORKS:
        raise fail(source, f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    record = obj.get(network) if isinstance(obj, dict) else None
    if not isinstance(record, PersistentRecord):
        present = [k for k in NETWORKS if isinstance(obj.get(k), PersistentRecord)] if isinstance(obj, dict) else []
        hint = f" (it has {', '.join(present)}; pass network=...)" if present else ""
        raise fail(source, f"the pickle has no generator '{network}'{hint}")
    _refuse_stylegan3(record, source)

    kwargs = _init_kwargs(record, source)
    c_dim = kwargs.get("c_dim", 0)
    if isinstance(c_dim, int) and c_dim > 0:
        raise fail(source, f"conditional StyleGAN2 models (c_dim={c_dim}) are not supported")
    flat_repo = _is_stylegan3_repo(record, kwargs)
    config = _config_from_kwargs(kwargs, flat_repo, source)

    raw: dict[str, Any] = {}
    _flatten(record, "", raw, source, depth=0)
    state = _drop_resample_filters(raw, source)
    has_w_avg = "mapping.w_avg" in state  # absent when trained with w_avg_beta=None
    if not has_w_avg:
        state["mapping.w_avg"] = torch.zeros(config.w_dim)  # placeholder, replaced below
    check_state_dict(state, config, source)  # first: the estimate needs well-shaped mapping weights
    if not has_w_avg:
        state["mapping.w_avg"] = estimate_w_avg(state, config)

    class_name = "training.networks_stylegan2.Generator" if flat_repo else "training.networks.Generator"
    details = {"network": network, "class_name": class_name, "pickle_class_name": record.class_name}
    return ReadResult(config=config, state_dict=state, has_w_avg=has_w_avg, details=details)


def _refuse_stylegan3(record: PersistentRecord, source: str) -> None:
    synthesis = record.state.get("_modules", {}).get("synthesis") if isinstance(record.state.get("_modules"), dict) else None
    children = synthesis.state.get("_modules", {}) if isinstance(synthesis, PersistentRecord) else {}
    names = list(children) if isinstance(children, dict) else []
    kwargs = record.state.get("_init_kwargs")
    synthesis_args = set(kwargs) if isinstance(kwargs, dict) else set()
    if (
        "input" in names
        or any(re.match(r"L\d+_", n) for n in names)
        or "class SynthesisInput" in record.module_src
        or synthesis_args & {"magnitude_ema_beta", "conv_kernel", "use_radial_filters"}
    ):
        raise fail(source, "it is a StyleGAN3 (alias-free) generator; StyleGAN3 is not supported, only StyleGAN2")


def _init_kwargs(record: PersistentRecord, source: str) -> dict[str, Any]:
    kwargs = record.state.get("_init_kwargs")
    args = record.state.get("_init_args", ())
    if not isinstance(kwargs, dict) or not isinstance(args, (tuple, list)):
        raise fail(source, "the generator has no constructor arguments (_init_kwargs); not an NVIDIA network pickle?")
    merged = dict(zip(_GENERATOR_ARGS, args))  # positional arguments, in the constructor's order
    merged.update(kwargs)
    return merged


def _is_stylegan3_repo(record: PersistentRecord, kwargs: dict[str, Any]) -> bool:
    """True if the kwargs follow the stylegan3 repo's flat StyleGAN2 signature."""
    if "synthesis_kwargs" in kwargs:
        return False
    if set(kwargs) - set(_GENERATOR_ARGS) - {"mapping_kwargs"}:
        return True  # flat synthesis arguments
    # No synthesis arguments at all: only the (unexecuted) source text can tell which defaults apply.
    return "fused_modconv_default" in record.module_src or "update_emas" in record.module_src


# Accepted constructor arguments: value checks for those our generator cannot vary, None for free ones.
_MAPPING_CHECKS: dict[str, Any] = {
    "num_layers": None,
    "lr_multiplier": None,
    "embed_features": None,  # only used when c_dim > 0
    "layer_features": "w_dim",  # None or equal to w_dim
    "activation": "lrelu",
    "w_avg_beta": None,
}
_SYNTHESIS_CHECKS: dict[str, Any] = {
    "channel_base": None,
    "channel_max": None,
    "num_fp16_res": None,
    "conv_clamp": None,
    "architecture": "skip",
    "resample_filter": [1, 3, 3, 1],
    "use_noise": True,
    "activation": "lrelu",
    "kernel_size": 3,
    "fp16_channels_last": None,  # memory layout only
    "fused_modconv_default": None,  # speed only
    "channels_last": None,
}


def _check_args(args: Any, checks: dict[str, Any], what: str, w_dim: Any, source: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise fail(source, f"{what} arguments are not a dict")
    for key, value in args.items():
        if key not in checks:
            raise fail(source, f"unknown {what} argument {key!r}={value!r}; not a StyleGAN2 generator this code supports")
        required = checks[key]
        if required == "w_dim":
            if value is not None and value != w_dim:
                raise fail(source, f"{what} {key}={value} differs from w_dim={w_dim}, which is not supported")
        elif required is not None and value is not None and _normalise(value) != _normalise(required):
            raise fail(source, f"{what} {key}={value!r} is not supported (only {required!r})")
    return args


def _normalise(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def _config_from_kwargs(kwargs: dict[str, Any], flat_repo: bool, source: str) -> GeneratorConfig:
    missing = [k for k in ("z_dim", "w_dim", "img_resolution", "img_channels") if k not in kwargs]
    if missing:
        raise fail(source, f"the generator's constructor arguments lack {', '.join(missing)}")
    w_dim = kwargs["w_dim"]
    mapping = _check_args(kwargs.get("mapping_kwargs", {}), _MAPPING_CHECKS, "mapping", w_dim, source)
    if flat_repo:
        synthesis = {k: v for k, v in kwargs.items() if k not in _GENERATOR_ARGS and k != "mapping_kwargs"}
        defaults = {"num_fp16_res": 4, "conv_clamp": 256}
    else:
        extra = set(kwargs) - set(_GENERATOR_ARGS) - {"mapping_kwargs", "synthesis_kwargs"}
        if extra:
            raise fail(source, f"unknown generator argument {sorted(extra)[0]!r}")
        synthesis = kwargs.get("synthesis_kwargs", {})
        defaults = {"num_fp16_res": 0, "conv_clamp": None}
    synthesis = _check_args(synthesis, _SYNTHESIS_CHECKS, "synthesis", w_dim, source)
    conv_clamp = synthesis.get("conv_clamp", defaults["conv_clamp"])
    lr_multiplier = mapping.get("lr_multiplier", 0.01)
    for key, value in (("conv_clamp", conv_clamp), ("lr_multiplier", lr_multiplier)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise fail(source, f"{key} is {value!r}, expected a number")
    return make_config(
        source,
        z_dim=kwargs["z_dim"],
        w_dim=w_dim,
        img_resolution=kwargs["img_resolution"],
        img_channels=kwargs["img_channels"],
        mapping_layers=mapping.get("num_layers", 8),
        mapping_lr_multiplier=float(lr_multiplier),
        channel_base=synthesis.get("channel_base", 32768),
        channel_max=synthesis.get("channel_max", 512),
        num_fp16_res=synthesis.get("num_fp16_res", defaults["num_fp16_res"]),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
    )


def _flatten(record: PersistentRecord, prefix: str, out: dict[str, Any], source: str, depth: int) -> None:
    """Collect parameters and persistent buffers of `record` and its children, as state_dict() would."""
    if depth > _MAX_DEPTH:
        raise fail(source, "modules are nested too deeply for a StyleGAN2 generator")
    state = record.state
    params, buffers, modules = (state.get(k, {}) for k in ("_parameters", "_buffers", "_modules"))
    skip = state.get("_non_persistent_buffers_set", set())
    if not all(isinstance(d, dict) for d in (params, buffers, modules)) or not isinstance(skip, (set, frozenset)):
        raise fail(source, f"module '{prefix.rstrip('.') or 'G'}' has a malformed state")
    for name, tensor in list(params.items()) + [(n, t) for n, t in buffers.items() if n not in skip]:
        if tensor is not None:
            out[f"{prefix}{name}"] = as_float32(tensor, f"{prefix}{name}", source)
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise fail(source, f"module '{prefix}{name}' is not an NVIDIA persistent module")
        _flatten(child, f"{prefix}{name}.", out, source, depth + 1)


def _drop_resample_filters(raw: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in raw.items():
        if key == "resample_filter" or key.endswith(".resample_filter"):
            if not is_reference_filter(tensor):
                raise fail(source, f"'{key}' is not the [1,3,3,1] filter; other resampling filters are not supported")
        else:
            state[key] = tensor
    return state
