"""Bias + activation + gain + clamp, the epilogue of every StyleGAN2 layer, in plain torch."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Activation = Literal["linear", "lrelu"]

#: Default gain per activation: sqrt(2) keeps the variance through a leaky ReLU (slope 0.2).
DEFAULT_GAIN: dict[str, float] = {"linear": 1.0, "lrelu": math.sqrt(2.0)}


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: Activation = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply the activation, multiply by gain, clamp.

    Args:
        x: Activations [N, C, ...].
        bias: Per-channel bias [C] or None.
        act: "linear" or "lrelu" (negative slope 0.2).
        gain: Output gain; None picks the activation's default (1 or sqrt(2)).
        clamp: Clamp the result to [-clamp, clamp] (None: no clamp), as NVIDIA's conv_clamp.
    """
    if bias is not None:
        x = x + bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    g = DEFAULT_GAIN[act] if gain is None else gain
    if g != 1:
        x = x * g
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x
