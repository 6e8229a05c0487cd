"""StyleGAN2 generator (config-f, 'skip' architecture) in plain torch.

Computes exactly what NVIDIA's `training.networks.Generator` computes (parameter names and
storage conventions included, so its state dict loads as is), built bottom-up from small
pieces: equalised linear layer -> mapping network; modulated conv layer, ToRGB -> synthesis
block -> synthesis network -> generator.

Precision: parameters stay float32. Blocks whose resolution is in
`SynthesisNetwork.low_precision_resolutions` (by default the checkpoint's `num_fp16_res`
highest) run under whatever autocast the caller enabled; every other block, the mapping network,
the style affines and the demodulation coefficients are explicit float32 islands. `conv_clamp`
applies to every convolution output, as in NVIDIA's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.kernels import bias_act, make_filter, modulated_conv2d, upsample2d

NoiseMode = Literal["const", "none", "random"]


def _fp32_island(device_type: str) -> torch.autocast:
    """A region where autocast is off, so that small but precision-critical ops run in float32."""
    return torch.autocast(device_type=device_type, enabled=False)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit mean square (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalised learning rate (runtime weight scaling).

    Stored weights are N(0, 1) / lr_multiplier; the layer multiplies them by
    lr_multiplier / sqrt(in_features) and the bias by lr_multiplier at run time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Literal["linear", "lrelu"] = "linear",
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / in_features**0.5
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ (self.weight * self.weight_gain).t()
        return bias_act(x, self.bias * self.bias_gain, act=self.activation)


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w broadcast to [B, num_ws, w_dim], with optional truncation towards w_avg."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.num_ws = config.num_ws
        self.z_dim = config.z_dim
        dims = [config.z_dim] + [config.w_dim] * config.mapping_layers
        for i in range(config.mapping_layers):
            layer = EqualizedLinear(dims[i], dims[i + 1], "lrelu", lr_multiplier=config.mapping_lr_multiplier)
            self.add_module(f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))
        self.num_layers = config.mapping_layers

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        with _fp32_island(z.device.type):
            x = normalize_2nd_moment(z.float())
            for i in range(self.num_layers):
                x = getattr(self, f"fc{i}")(x)
            if truncation_psi != 1:
                x = self.w_avg + truncation_psi * (x - self.w_avg)
        return x.unsqueeze(1).expand(-1, self.num_ws, -1)  # [B, num_ws, w_dim]


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + noise + bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: bool,
        conv_clamp: float | None,
    ) -> None:
        super().__init__()
        self.up = up
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        resample_filter: torch.Tensor,
        noise_mode: NoiseMode,
        noise: torch.Tensor | None,
        fused: bool,
    ) -> torch.Tensor:
        with _fp32_island(x.device.type):
            styles = self.affine(w.float())  # [B, I]
        x = modulated_conv2d(x, self.weight, styles, up=self.up, resample_filter=resample_filter, fused=fused)
        if noise is None and noise_mode == "const":
            noise = self.noise_const
        elif noise is None and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device)
        if noise is not None:
            x = x + (noise * self.noise_strength).to(x.dtype)
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, to image channels."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / in_channels**0.5

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        with _fp32_island(x.device.type):
            styles = self.affine(w.float()) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | upsampling conv0) -> conv1 -> ToRGB added to the upsampled image.

    Uses ws[:, 0] for conv0, ws[:, 1] for conv1 and ws[:, 2] for ToRGB (the 4x4 block has no
    conv0, so it uses ws[:, 0] and ws[:, 1]).
    """

    def __init__(self, config: GeneratorConfig, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        out_ch = config.channels_at(resolution)
        clamp = config.conv_clamp
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
        else:
            in_ch = config.channels_at(resolution // 2)
            self.conv0 = SynthesisLayer(in_ch, out_ch, config.w_dim, resolution, up=True, conv_clamp=clamp)
        self.conv1 = SynthesisLayer(out_ch, out_ch, config.w_dim, resolution, up=False, conv_clamp=clamp)
        self.torgb = ToRGBLayer(out_ch, config.img_channels, config.w_dim, conv_clamp=clamp)
        self.num_conv = 1 if resolution == 4 else 2

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        resample_filter: torch.Tensor,
        noise_mode: NoiseMode,
        noise: Sequence[torch.Tensor | None],
        fused: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], resample_filter, noise_mode, noise[0], fused)
        else:
            x = self.conv0(x, ws[:, 0], resample_filter, noise_mode, noise[0], fused)
            x = self.conv1(x, ws[:, 1], resample_filter, noise_mode, noise[1], fused)
        y = self.torgb(x, ws[:, self.num_conv], fused).float()
        img = y if img is None else upsample2d(img, resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """w+ [B, num_ws, w_dim] -> images [B, img_channels, R, R] (raw scale, about [-1, 1]).

    Attributes:
        fused_modconv: Use the grouped per-sample-weight convolution instead of the default
            non-fused form (same result; slower backward, batch-dependent graph).
        low_precision_resolutions: Blocks allowed to run under the caller's autocast.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.num_ws = config.num_ws
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        for res in config.block_resolutions:
            self.add_module(f"b{res}", SynthesisBlock(config, res))
        self.register_buffer("resample_filter", make_filter([1, 3, 3, 1]), persistent=False)
        self.fused_modconv = False
        self.low_precision_resolutions: frozenset[int] = frozenset(config.fp16_resolutions)

    @property
    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.config.block_resolutions]

    @property
    def num_noise_layers(self) -> int:
        """Number of per-layer noise inputs (one per conv layer), in `noise_shapes` order."""
        return self.num_ws - 1

    def noise_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of every conv layer's noise input, in layer order (4x4 conv1, 8x8 conv0, conv1, ...)."""
        return [(b.resolution, b.resolution) for b in self.blocks for _ in range(b.num_conv)]

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        noise: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Synthesise images from per-layer styles.

        Args:
            ws: [B, num_ws, w_dim] style vectors.
            noise_mode: "const" (the checkpoint's stored noise), "none" or "random".
            noise: Explicit per-layer noise tensors ([B or 1, 1, H, W], `noise_shapes` order);
                overrides `noise_mode`.
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if noise is not None and len(noise) != self.num_noise_layers:
            raise ValueError(f"expected {self.num_noise_layers} noise tensors, got {len(noise)}")
        if noise_mode not in ("const", "none", "random"):
            raise ValueError(f"noise_mode must be 'const', 'none' or 'random', got {noise_mode!r}")
        device_type = ws.device.type
        x = img = None
        w_idx = noise_idx = 0
        for block in self.blocks:
            block_noise: Sequence[torch.Tensor | None] = (
                [None] * block.num_conv if noise is None else noise[noise_idx : noise_idx + block.num_conv]
            )
            block_ws = ws[:, w_idx : w_idx + block.num_conv + 1]
            if block.resolution in self.low_precision_resolutions:
                x, img = block(x, img, block_ws, self.resample_filter, noise_mode, block_noise, self.fused_modconv)
            else:
                with _fp32_island(device_type):
                    x = None if x is None else x.float()
                    x, img = block(x, img, block_ws, self.resample_filter, noise_mode, block_noise, self.fused_modconv)
            w_idx += block.num_conv
            noise_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: `mapping(z) -> ws`, `synthesis(ws) -> images`.

    Attributes mirror NVIDIA's: `z_dim`, `w_dim`, `num_ws`, `img_resolution`, `img_channels`.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.w_dim = config.w_dim
        self.num_ws = config.num_ws
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)

    @classmethod
    def from_state_dict(cls, config: GeneratorConfig, state_dict: Mapping[str, torch.Tensor]) -> Generator:
        """A frozen generator in eval mode on the CPU holding `state_dict` (every key of
        `Generator(config).state_dict()`, nothing else), e.g. a `Checkpoint`'s."""
        generator = cls(config)
        generator.load_state_dict(state_dict, strict=True)
        return generator.eval().requires_grad_(False)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: NoiseMode = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode)
