"""The shape of a StyleGAN2 generator, independent of where its weights came from.

Field names and meanings follow NVIDIA's `training.networks.Generator` constructor, so a config
read from an NVIDIA pickle maps one to one; rosinality and TensorFlow checkpoints are translated
into the same fields by their loaders.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of a StyleGAN2 config-f ('skip') generator.

    Attributes:
        z_dim: Length of the input latent z.
        w_dim: Length of an intermediate latent w.
        img_resolution: Output side length in pixels (a power of two, >= 8).
        img_channels: Output colour channels (3 for RGB).
        mapping_layers: Fully connected layers in the mapping network.
        mapping_lr_multiplier: Equalised learning-rate multiplier of the mapping layers.
        channel_base: Channels at resolution r are min(channel_base // r, channel_max).
        channel_max: Upper bound on channels per layer.
        num_fp16_res: How many of the highest resolutions NVIDIA runs in float16 (0 = none).
        conv_clamp: Clamp of every convolution's output (None = no clamp), as in NVIDIA's code.
    """

    z_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None

    def __post_init__(self) -> None:
        log2 = math.log2(self.img_resolution) if self.img_resolution > 0 else 0.0
        if self.img_resolution < 8 or log2 != int(log2):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {self.img_resolution}")
        for name in ("z_dim", "w_dim", "img_channels", "mapping_layers", "channel_base", "channel_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def block_resolutions(self) -> list[int]:
        """Resolutions of the synthesis blocks: 4, 8, ..., img_resolution."""
        return [2**i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def channels_at(self, resolution: int) -> int:
        """Feature channels of the synthesis block at `resolution`."""
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def num_ws(self) -> int:
        """Number of per-layer style vectors: one per convolution plus the last ToRGB."""
        return 2 * len(self.block_resolutions)

    @property
    def fp16_resolutions(self) -> list[int]:
        """Block resolutions NVIDIA runs in float16 on CUDA (num_fp16_res highest, never below 8)."""
        if self.num_fp16_res <= 0:
            return []
        first = max(2 ** (int(math.log2(self.img_resolution)) + 1 - self.num_fp16_res), 8)
        return [r for r in self.block_resolutions if r >= first]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Inverse of `to_dict`; unknown keys are an error so a typo is never silently dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown generator config keys: {unknown}")
        return cls(**data)
