"""Which torch device a run or a benchmark asked for, checked against this machine."""

from __future__ import annotations

import torch

from lbrgm_fast.errors import UserError


def resolve_device(name: str | None) -> torch.device:
    """"cpu", "cuda", or "auto" / None (CUDA when torch sees a GPU, else the CPU).

    Raises:
        UserError: an unknown name, or "cuda" on a machine where torch sees no GPU.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose cpu, cuda or auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch on this machine")
    return torch.device(name)
