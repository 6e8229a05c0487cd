"""Which torch device a run or a benchmark asked for, checked against this machine, and what
its CPU can do."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class CpuFeatures:
    """What torch reports of this CPU's vector units, as far as choosing a precision goes.

    Attributes:
        capability: The kernels torch's own CPU code runs (`torch.backends.cpu.get_cpu_capability()`:
            DEFAULT, AVX2, AVX512, ...).
        avx512_bf16: bf16 dot products in AVX-512 (Intel Cooper Lake and later, AMD Zen 4 and later).
        amx: Intel's AMX tile units (Sapphire Rapids and later), bf16 matrix products.
    """

    capability: str
    avx512_bf16: bool
    amx: bool

    @property
    def native_bf16(self) -> bool:
        """Whether oneDNN runs bf16 convolutions on bf16 instructions here, rather than
        converting to float32 and back around float32 arithmetic (many times slower)."""
        return self.avx512_bf16 or self.amx


def cpu_features() -> CpuFeatures:
    """This CPU, as torch's own queries see it (the ones its oneDNN dispatch relies on)."""
    return CpuFeatures(torch.backends.cpu.get_cpu_capability(), _torch_cpu_has("_is_avx512_bf16_supported"), _torch_cpu_has("_is_amx_tile_supported"))


def _torch_cpu_has(query: str) -> bool:
    # Private but stable queries of torch.cpu (torch >= 2.3); an older torch lacks them: no.
    function = getattr(torch.cpu, query, None)
    return bool(function()) if function is not None else False
