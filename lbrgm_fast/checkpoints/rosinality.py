"""rosinality/stylegan2-pytorch checkpoints, translated to NVIDIA's key names.

Layouts: `{'g_ema': state_dict, 'latent_avg': w}` (written by its convert_weight.py) and training
checkpoints `{'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args', 'ada_aug_p'}` without
`latent_avg`; a bare generator state dict is accepted too.

Both code bases store weights the same way (N(0,1) values, runtime scaling by lr_mul/sqrt(fan_in)),
so tensors are only renamed and reshaped, never rescaled:
- `style.{i+1}` (index 0 is PixelNorm) -> `mapping.fc{i}`; `latent_avg` -> `mapping.w_avg`.
- `input.input` [1,C,4,4] -> `synthesis.b4.const` [C,4,4].
- `conv1` -> `synthesis.b4.conv1`; `to_rgb1` -> `synthesis.b4.torgb`.
- `convs.{2k}` (upsampling) / `convs.{2k+1}` -> `synthesis.b{2^(k+3)}.conv0` / `.conv1`;
  `to_rgbs.{k}` -> `synthesis.b{2^(k+3)}.torgb`.
- `*.conv.weight` [1,O,I,k,k] -> `.weight` [O,I,k,k]; `*.conv.modulation` -> `.affine`;
  `*.noise.weight` [1] -> `.noise_strength` []; `*.activate.bias` -> `.bias`;
  `to_rgb*.bias` [1,C,1,1] -> [C].
- `noises.noise_0` -> `b4.conv1.noise_const`; `noise_{2k+1}` / `noise_{2k+2}` -> conv0 / conv1
  of block 2^(k+3); [1,1,r,r] -> [r,r].
- Blur kernels (`convs.{2k}.conv.blur.kernel`, `to_rgbs.{k}.upsample.kernel`) must equal
  4 x NVIDIA's normalised [1,3,3,1] filter (rosinality folds the upsampling gain in); dropped.

The config is read from the tensors: resolution from the number of ToRGB layers, z/w size from
`style.1`, channels per resolution solved into channel_base/channel_max. rosinality has no
fp16 or clamping (num_fp16_res 0, conv_clamp None) and a mapping lr multiplier of 0.01 (its
default, which its train.py does not expose).
"""

from __future__ import annotations

from typing import Any

import torch

from lbrgm_fast.checkpoints.checkpoint import ReadResult, as_float32, fail
from lbrgm_fast.checkpoints.layout import (
    W_AVG_SEED,
    check_state_dict,
    estimate_w_avg,
    is_reference_filter,
    make_config,
    solve_channels,
)
from lbrgm_fast.config import GeneratorConfig

_NETWORK_KEYS = {"G_ema": "g_ema", "G": "g"}


def is_rosinality(obj: Any) -> bool:
    """True for a rosinality checkpoint dict or a bare rosinality generator state dict."""
    return isinstance(obj, dict) and any(k in obj for k in ("g_ema", "g", "style.1.weight"))


def read_rosinality(obj: dict[str, Any], source: str, network: str) -> ReadResult:
    """Translate a loaded rosinality checkpoint; `network` 'G_ema' takes `g_ema`, 'G' takes `g`."""
    if network not in _NETWORK_KEYS:
        raise fail(source, f"network must be one of {', '.join(_NETWORK_KEYS)}, got {network!r}")
    details: dict[str, Any] = {}
    if "style.1.weight" in obj:  # a bare generator state dict
        sd, latent_avg = obj, None
        details["network"] = "state_dict"
    else:
        key = _NETWORK_KEYS[network]
        sd = obj.get(key)
        if not isinstance(sd, dict):
            present = [k for k in ("g_ema", "g") if isinstance(obj.get(k), dict)]
            hint = f" (it has {', '.join(present)})" if present else ""
            raise fail(source, f"the rosinality checkpoint has no generator '{key}'{hint}")
        # latent_avg is the average of g_ema's mapping; it does not describe g.
        latent_avg = obj.get("latent_avg") if key == "g_ema" else None
        details["network"] = key

    config, state, noise_stored = _translate(sd, source)
    details["noise_buffers"] = "stored" if noise_stored else f"generated (torch.Generator seed {W_AVG_SEED})"
    has_w_avg = latent_avg is not None
    if has_w_avg:
        state["mapping.w_avg"] = as_float32(latent_avg, "latent_avg", source).reshape(-1)
    else:
        state["mapping.w_avg"] = torch.zeros(config.w_dim)  # placeholder, replaced below
    check_state_dict(state, config, source)  # first: the estimate needs well-shaped mapping weights
    if not has_w_avg:
        state["mapping.w_avg"] = estimate_w_avg(state, config)
    return ReadResult(config=config, state_dict=state, has_w_avg=has_w_avg, details=details)


class _Source:
    """Pops tensors from a rosinality state dict, with clear errors for missing or odd ones."""

    def __init__(self, sd: dict[str, Any], source: str) -> None:
        self.sd = dict(sd)
        self.source = source

    def pop(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise fail(self.source, f"the rosinality generator lacks '{key}'")
        return as_float32(self.sd.pop(key), key, self.source)

    def pop_squeezed(self, key: str, ndim: int) -> torch.Tensor:
        """Pop a tensor stored with leading singleton axes and return its last `ndim` axes."""
        tensor = self.pop(key)
        lead = tensor.shape[: tensor.ndim - ndim]
        if tensor.ndim < ndim or any(s != 1 for s in lead):
            raise fail(self.source, f"'{key}' has shape {list(tensor.shape)}, which no StyleGAN2 layer has")
        return tensor.reshape(tensor.shape[tensor.ndim - ndim :])

    def pop_kernel(self, key: str) -> None:
        if not is_reference_filter(self.pop(key), scale=4.0):
            raise fail(self.source, f"'{key}' is not the [1,3,3,1] blur kernel; other kernels are not supported")


def _count(sd: dict[str, Any], pattern: str, start: int) -> int:
    n = start
    while pattern.format(n) in sd:
        n += 1
    return n - start


def _translate(sd: dict[str, Any], source: str) -> tuple[GeneratorConfig, dict[str, torch.Tensor], bool]:
    src = _Source(sd, source)
    n_mlp = _count(sd, "style.{}.weight", 1)
    n_up = _count(sd, "to_rgbs.{}.conv.weight", 0)
    if n_mlp == 0:
        raise fail(source, "the rosinality generator has no mapping layers ('style.1.weight')")
    noise_stored = "noises.noise_0" in sd
    noise_gen = torch.Generator().manual_seed(W_AVG_SEED)
    out: dict[str, torch.Tensor] = {}

    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = src.pop(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = src.pop(f"style.{i + 1}.bias")

    def noise(index: int, res: int) -> torch.Tensor:
        if noise_stored:
            return src.pop_squeezed(f"noises.noise_{index}", 2)
        return torch.randn(res, res, generator=noise_gen)  # old checkpoints drew noise per call

    def conv(name: str, dst: str, noise_index: int, res: int, up: bool) -> None:
        out[f"{dst}.weight"] = src.pop_squeezed(f"{name}.conv.weight", 4)
        out[f"{dst}.noise_strength"] = src.pop_squeezed(f"{name}.noise.weight", 0)
        out[f"{dst}.bias"] = src.pop(f"{name}.activate.bias")
        out[f"{dst}.noise_const"] = noise(noise_index, res)
        out[f"{dst}.affine.weight"] = src.pop(f"{name}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = src.pop(f"{name}.conv.modulation.bias")
        if up:
            src.pop_kernel(f"{name}.conv.blur.kernel")

    def torgb(name: str, dst: str, up: bool) -> None:
        out[f"{dst}.weight"] = src.pop_squeezed(f"{name}.conv.weight", 4)
        out[f"{dst}.bias"] = src.pop(f"{name}.bias").reshape(-1)
        out[f"{dst}.affine.weight"] = src.pop(f"{name}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = src.pop(f"{name}.conv.modulation.bias")
        if up:
            src.pop_kernel(f"{name}.upsample.kernel")

    out["synthesis.b4.const"] = src.pop_squeezed("input.input", 3)
    conv("conv1", "synthesis.b4.conv1", 0, 4, up=False)
    torgb("to_rgb1", "synthesis.b4.torgb", up=False)
    channels = {4: out["synthesis.b4.const"].shape[0]}
    for k in range(n_up):
        res = 2 ** (k + 3)
        conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1, res, up=True)
        conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2, res, up=False)
        torgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb", up=True)
        channels[res] = out[f"synthesis.b{res}.conv0.weight"].shape[0]

    if src.sd:
        raise fail(source, f"unexpected key '{sorted(src.sd)[0]}' for a rosinality StyleGAN2 generator")

    fc0 = out["mapping.fc0.weight"]
    channel_base, channel_max = solve_channels(channels, source)
    config = make_config(
        source,
        z_dim=int(fc0.shape[1]) if fc0.ndim == 2 else 0,
        w_dim=int(fc0.shape[0]),
        img_resolution=2 ** (n_up + 2),
        img_channels=int(out["synthesis.b4.torgb.weight"].shape[0]),
        mapping_layers=n_mlp,
        mapping_lr_multiplier=0.01,
        channel_base=channel_base,
        channel_max=channel_max,
        num_fp16_res=0,
        conv_clamp=None,
    )
    return config, out, noise_stored
