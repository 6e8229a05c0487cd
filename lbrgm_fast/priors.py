"""Priors on the latent variables, each returning one value per sample, shape (B,).

L-BRGM regularises the per-layer styles w+ towards the mapping network's output M(z) and keeps
z near the origin; BRGM puts a Gaussian prior around w_avg and a cosine-similarity prior on the
layers of w+. `reduction` chooses between the authors' code ("mean" over the elements) and the
paper's text ("sum", a squared norm); `MethodSettings` in methods.py names both as presets.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Reduction = Literal["mean", "sum"]


def _reduce(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Reduce all dims but the batch dim."""
    flat = x.flatten(1)
    return flat.mean(dim=1) if reduction == "mean" else flat.sum(dim=1)


class MappingPrior(nn.Module):
    """‖w_i − M(z)‖² over the layers i: w+ should stay on the mapping network's output for z.

    Args:
        mapping: The generator's mapping network (frozen).
        reduction: "mean" over [L, w_dim] (authors' code) or "sum" (paper text).
    """

    def __init__(self, mapping: nn.Module, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.mapping = mapping
        self.reduction: Reduction = reduction

    def forward(self, w_plus: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        w_of_z = self.mapping(z)  # [B, L, w_dim], float32
        return _reduce((w_plus.float() - w_of_z).square(), self.reduction)


class LatentPrior(nn.Module):
    """‖z‖²: a standard normal prior on the mapping network's input."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.reduction: Reduction = reduction

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _reduce(z.float().square(), self.reduction)


class GaussianPrior(nn.Module):
    """BRGM's prior: mean(((w − w_avg) / σ)²) with one scalar σ (brgm-pytorch)."""

    def __init__(self, w_avg: torch.Tensor, sigma: float | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w_avg", w_avg.detach().float().reshape(-1))
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=torch.float32))

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        return _reduce(((w_plus.float() - self.w_avg) / self.sigma).square(), "mean")

    @classmethod
    def from_mapping(cls, mapping: nn.Module, z_dim: int, num_samples: int = 10_000, seed: int = 123) -> GaussianPrior:
        """Estimate w_avg and σ = sqrt(Σ‖w − w̄‖² / N) from `num_samples` mapping outputs, as BRGM does."""
        gen = torch.Generator().manual_seed(seed)
        device = next(mapping.parameters()).device
        z = torch.randn(num_samples, z_dim, generator=gen).to(device)
        with torch.no_grad():
            w = torch.cat([mapping(chunk)[:, 0] for chunk in z.split(1000)])  # [N, w_dim]
        w_avg = w.mean(dim=0)
        sigma = (w - w_avg).square().sum(dim=1).mean().sqrt()
        return cls(w_avg, sigma)


class CosinePrior(nn.Module):
    """BRGM's Σ_{i,j} |1 − cos(w_i, w_j)| over all L×L layer pairs: keeps w+ layers aligned."""

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        w = w_plus.float()
        unit = w / w.norm(dim=2, keepdim=True).clamp_min(1e-8)
        cos = unit @ unit.transpose(1, 2)  # [B, L, L]
        return (1 - cos).abs().sum(dim=(1, 2))
