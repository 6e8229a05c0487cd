"""Forward-only engines: what scores the N1 initial candidates and monitors LPIPS.

An engine answers three questions on device tensors and never copies images to the host:
`generate(z)` (mapping + synthesis with the stored noise), `features(images)` (φ) and
`lpips(x, y)` (the LPIPS(alex) monitor). `TorchEngine` runs the torch modules themselves;
exported engines (ONNX Runtime, TensorRT) implement the same protocol from an engine plan.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lbrgm_fast.model import Generator
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features


class ForwardEngine(Protocol):
    """Forward-only phases of a reconstruction, on the device's tensors."""

    name: str

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] for latents z [N, z_dim] (noise: the stored buffers)."""
        ...

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """φ features of images [N, 3, h, w] in [-1, 1] (see VGG16Features.features)."""
        ...

    def lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS(alex) per sample (N,), images in [-1, 1]."""
        ...


class TorchEngine:
    """The torch modules themselves (eager), the reference every other engine must match."""

    name = "torch"

    def __init__(self, generator: Generator, perceptual: VGG16Features | None, monitor: LpipsAlex | None = None) -> None:
        self.generator = generator
        self.perceptual = perceptual
        self.monitor = monitor

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesis(self.generator.mapping(z), noise_mode="const")

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.perceptual is None:
            raise RuntimeError("this engine has no perceptual network")
        return self.perceptual.features(images)

    @torch.no_grad()
    def lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.monitor is None:
            raise RuntimeError("this engine has no LPIPS monitor")
        return self.monitor(x, y).reshape(-1)
