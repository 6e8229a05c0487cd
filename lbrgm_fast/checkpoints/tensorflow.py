"""Original TensorFlow StyleGAN2 pickles (NVlabs/stylegan2, stylegan2-ada TF), read as data.

The pickle is a tuple (G, D, Gs) of `dnnlib.tflib.network.Network` states (see `safe_pickle`):
`static_kwargs` (the build arguments), `components` (`mapping`, `synthesis`) and `variables`
as (name, ndarray). No TensorFlow is needed. Conventions, as NVIDIA's own converter applies them:
- dense weights are [in, out] -> transposed; conv weights HWIO -> OIHW;
- `Conv0_up` weights are also flipped spatially (TF's transposed convolution orientation);
- `mod_weight` -> `affine.weight` (transposed), `mod_bias` + 1 -> `affine.bias`;
- `synthesis/noise{i}` [1,1,r,r]: i = 0 for the 4x4 conv, 2*log2(r)-5 / -4 for conv0 / conv1;
- `4x4/Const/const` [1,C,4,4] -> const [C,4,4]; `dlatent_avg` -> `mapping.w_avg`;
- channel_base = 2 x fmap_base (TF counts channels from stage = log2(r) - 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lbrgm_fast.checkpoints.checkpoint import ReadResult, fail
from lbrgm_fast.checkpoints.layout import check_state_dict, make_config
from lbrgm_fast.checkpoints.safe_pickle import TFNetworkRecord, unwrap_array
from lbrgm_fast.config import GeneratorConfig

_NETWORK_INDEX = {"G": 0, "G_ema": 2}  # (G, D, Gs); Gs is the moving average, NVIDIA's G_ema
# TF build arguments: None = free (read below or irrelevant to inference), else the only supported value.
_KNOWN_KWARGS: dict[str, Any] = {
    "latent_size": None, "label_size": None, "dlatent_size": None, "resolution": None,
    "num_channels": None, "mapping_layers": None, "mapping_fmaps": None, "mapping_lrmul": None,
    "fmap_base": None, "fmap_max": None, "num_fp16_res": None, "conv_clamp": None,
    "mapping_nonlinearity": "lrelu", "nonlinearity": "lrelu", "architecture": "skip",
    "resample_kernel": [1, 3, 3, 1], "use_noise": True, "normalize_latents": True, "fmap_decay": 1.0,
    "synthesis_func": "G_synthesis_stylegan2", "mapping_func": "G_mapping",
    # Training-time or speed-only switches that do not change the function computed.
    "fmap_min": None, "truncation_psi": None, "truncation_cutoff": None, "truncation_psi_val": None,
    "truncation_cutoff_val": None, "dlatent_avg_beta": None, "w_avg_beta": None,
    "style_mixing_prob": None, "randomize_noise": None, "dtype": None, "fused_modconv": None,
    "structure": None, "is_template_graph": None, "is_training": None, "is_validation": None,
    "return_dlatents": None, "label_fmaps": None,
}
_IGNORED_VARIABLES = ("lod",)  # progressive-growing level; always 0 for a finished StyleGAN2


def is_tensorflow_pickle(obj: Any) -> bool:
    """True for a (G, D, Gs) tuple of TensorFlow network states, or a single one."""
    if isinstance(obj, TFNetworkRecord):
        return True
    return isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetworkRecord) for n in obj)


def read_tensorflow(obj: Any, source: str, network: str) -> ReadResult:
    """Convert TensorFlow network states to NVIDIA-named tensors; `network` picks Gs ('G_ema') or G."""
    if network not in _NETWORK_INDEX:
        raise fail(source, f"network must be one of G_ema, G, got {network!r}")
    net = obj if isinstance(obj, TFNetworkRecord) else obj[_NETWORK_INDEX[network]]
    state = net.state
    if not isinstance(state, dict) or not isinstance(state.get("static_kwargs", {}), dict):
        raise fail(source, "the TensorFlow network has no readable state")
    kwargs = dict(state.get("static_kwargs", {}))
    config = _config(kwargs, source)
    params = _collect(net, "", {}, source, depth=0)
    out = _convert(params, config, source)
    leftover = sorted(k for k in params if k not in _used_names(config) and k.split("/")[-1] not in _IGNORED_VARIABLES)
    if leftover:
        raise fail(source, f"unexpected TensorFlow variable '{leftover[0]}'; not a StyleGAN2 config-e/f generator")
    check_state_dict(out, config, source)
    details = {"network": "Gs" if network == "G_ema" else "G", "tf_name": str(state.get("name", ""))}
    return ReadResult(config=config, state_dict=out, has_w_avg=True, details=details)


def _config(kwargs: dict[str, Any], source: str) -> GeneratorConfig:
    for key, value in kwargs.items():
        if key not in _KNOWN_KWARGS:
            raise fail(source, f"unknown TensorFlow generator argument {key!r}")
        required = _KNOWN_KWARGS[key]
        if required is not None and value is not None and _norm(value) != _norm(required):
            raise fail(source, f"TensorFlow {key}={value!r} is not supported (only {required!r})")
    label_size = kwargs.get("label_size") or 0
    if label_size:
        raise fail(source, f"conditional StyleGAN2 models (c_dim={label_size}) are not supported")
    w_dim = kwargs.get("dlatent_size") or 512
    mapping_fmaps = kwargs.get("mapping_fmaps") or 512  # TF's default, not w_dim
    if mapping_fmaps != w_dim:
        raise fail(source, f"mapping_fmaps={mapping_fmaps} differs from dlatent_size={w_dim}, which is not supported")
    fmap_base = kwargs.get("fmap_base") or 16384
    conv_clamp = kwargs.get("conv_clamp")
    return make_config(
        source,
        z_dim=kwargs.get("latent_size") or 512,
        w_dim=w_dim,
        img_resolution=kwargs.get("resolution") or 1024,
        img_channels=kwargs.get("num_channels") or 3,
        mapping_layers=kwargs.get("mapping_layers") or 8,
        mapping_lr_multiplier=float(kwargs.get("mapping_lrmul") or 0.01),
        channel_base=fmap_base * 2 if isinstance(fmap_base, int) else fmap_base,
        channel_max=kwargs.get("fmap_max") or 512,
        num_fp16_res=kwargs.get("num_fp16_res") or 0,
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
    )


def _norm(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def _collect(net: TFNetworkRecord, prefix: str, out: dict[str, np.ndarray], source: str, depth: int) -> dict[str, np.ndarray]:
    if depth > 4 or not isinstance(net.state, dict):
        raise fail(source, "malformed TensorFlow network state")
    variables = net.state.get("variables", [])
    components = net.state.get("components", {})
    if not isinstance(variables, (list, tuple)) or not isinstance(components, dict):
        raise fail(source, "malformed TensorFlow network state")
    for item in variables:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise fail(source, "malformed TensorFlow variable list")
        value = unwrap_array(item[1])
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise fail(source, f"TensorFlow variable '{prefix}{item[0]}' is not a floating-point array")
        out[prefix + item[0]] = value
    for name, component in components.items():
        if not isinstance(component, TFNetworkRecord):
            raise fail(source, f"TensorFlow component '{name}' is not a network")
        _collect(component, f"{prefix}{name}/", out, source, depth + 1)
    return out


def _layers(config: GeneratorConfig) -> list[tuple[str, str, int, bool]]:
    """(NVIDIA prefix, TF scope, noise index, flip) for every modulated conv layer."""
    layers = [("synthesis.b4.conv1", "synthesis/4x4/Conv", 0, False)]
    for res in config.block_resolutions[1:]:
        log2 = int(math.log2(res))
        layers.append((f"synthesis.b{res}.conv0", f"synthesis/{res}x{res}/Conv0_up", 2 * log2 - 5, True))
        layers.append((f"synthesis.b{res}.conv1", f"synthesis/{res}x{res}/Conv1", 2 * log2 - 4, False))
    return layers


def _used_names(config: GeneratorConfig) -> set[str]:
    names = {"dlatent_avg", "synthesis/4x4/Const/const"}
    names |= {f"mapping/Dense{i}/{p}" for i in range(config.mapping_layers) for p in ("weight", "bias")}
    for _, scope, noise, _ in _layers(config):
        names |= {f"{scope}/{p}" for p in ("weight", "bias", "noise_strength", "mod_weight", "mod_bias")}
        names.add(f"synthesis/noise{noise}")
    for res in config.block_resolutions:
        names |= {f"synthesis/{res}x{res}/ToRGB/{p}" for p in ("weight", "bias", "mod_weight", "mod_bias")}
    return names


def _convert(params: dict[str, np.ndarray], config: GeneratorConfig, source: str) -> dict[str, torch.Tensor]:
    def get(name: str, ndim: int) -> np.ndarray:
        if name not in params:
            raise fail(source, f"the TensorFlow generator lacks variable '{name}'")
        value = params[name]
        if value.ndim != ndim:
            raise fail(source, f"TensorFlow variable '{name}' has shape {list(value.shape)}, which no StyleGAN2 has")
        return value

    def t(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # keeps 0-d arrays 0-d

    out: dict[str, torch.Tensor] = {}
    out["synthesis.b4.const"] = t(get("synthesis/4x4/Const/const", 4)[0])
    for prefix, scope, noise, flip in _layers(config):
        weight = get(f"{scope}/weight", 4)
        weight = weight[::-1, ::-1] if flip else weight
        out[f"{prefix}.weight"] = t(weight.transpose(3, 2, 0, 1))
        out[f"{prefix}.noise_strength"] = t(get(f"{scope}/noise_strength", 0))
        out[f"{prefix}.bias"] = t(get(f"{scope}/bias", 1))
        out[f"{prefix}.noise_const"] = t(get(f"synthesis/noise{noise}", 4)[0, 0])
        out[f"{prefix}.affine.weight"] = t(get(f"{scope}/mod_weight", 2).T)
        out[f"{prefix}.affine.bias"] = t(get(f"{scope}/mod_bias", 1) + 1)
    for res in config.block_resolutions:
        scope = f"synthesis/{res}x{res}/ToRGB"
        out[f"synthesis.b{res}.torgb.weight"] = t(get(f"{scope}/weight", 4).transpose(3, 2, 0, 1))
        out[f"synthesis.b{res}.torgb.bias"] = t(get(f"{scope}/bias", 1))
        out[f"synthesis.b{res}.torgb.affine.weight"] = t(get(f"{scope}/mod_weight", 2).T)
        out[f"synthesis.b{res}.torgb.affine.bias"] = t(get(f"{scope}/mod_bias", 1) + 1)
    out["mapping.w_avg"] = t(get("dlatent_avg", 1))
    for i in range(config.mapping_layers):
        out[f"mapping.fc{i}.weight"] = t(get(f"mapping/Dense{i}/weight", 2).T)
        out[f"mapping.fc{i}.bias"] = t(get(f"mapping/Dense{i}/bias", 1))
    return out
