"""The format-independent result of reading a generator checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import CheckpointError

FORMATS = ("nvidia-pickle", "rosinality", "lbrgm", "tensorflow-pickle")


@dataclass(frozen=True, eq=False)  # eq=False: comparing dicts of tensors has no single truth value
class Checkpoint:
    """A StyleGAN2 generator read from any supported file.

    Attributes:
        config: The generator's shape, with NVIDIA's meaning.
        state_dict: float32 CPU tensors under NVIDIA's key names minus `*.resample_filter`:
            exactly the keys of `lbrgm_fast.model.Generator(config).state_dict()`.
        format: One of `FORMATS`: where the weights came from.
        sha256: Hex SHA-256 of the file that was read.
        has_w_avg: False if the file stored no average w; `mapping.w_avg` is then estimated
            (see `layout.estimate_w_avg`).
        source: The path as given by the caller.
        details: Format-specific facts (which network was taken, inferred class, ...).
    """

    config: GeneratorConfig
    state_dict: dict[str, torch.Tensor]
    format: str
    sha256: str
    has_w_avg: bool
    source: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ReadResult:
    """What one format reader returns; `read_checkpoint` adds format, hash and source."""

    config: GeneratorConfig
    state_dict: dict[str, torch.Tensor]
    has_w_avg: bool
    details: dict[str, Any]


def fail(source: str, problem: str) -> CheckpointError:
    """A `CheckpointError` with the one-line message every loader uses."""
    return CheckpointError(f"cannot use checkpoint '{source}': {problem}")


def as_float32(tensor: object, key: str, source: str) -> torch.Tensor:
    """Check that `tensor` is a floating-point tensor and return a float32 CPU copy of it."""
    if not isinstance(tensor, torch.Tensor):
        raise fail(source, f"'{key}' is {type(tensor).__name__}, not a tensor")
    if not tensor.is_floating_point():
        raise fail(source, f"'{key}' has dtype {tensor.dtype}, expected floating point")
    return tensor.detach().to("cpu", torch.float32).contiguous().clone()
