"""What a seeded run promises to reproduce, and the settings that keep the promise.

Two promises (docs/reproducibility.md has the evidence behind them):

* **default**: same seed, same machine, same software and same thread count give the same
  result, within a process and across processes, wherever the CPU's math libraries are
  deterministic at a fixed thread count. Two settings make them so where they can be made so
  at no measured cost: Intel MKL's strict Conditional Numerical Reproducibility
  (`MKL_CBWR=AUTO,STRICT`: its matrix products, the Linear layers and im2col convolutions of
  the step, then sum in an order that no thread count, thread timing or buffer alignment
  changes) with its dynamic threading off, and oneDNN's deterministic attribute for the
  convolutions. On a CPU where something else still varies, results differ only by rounding
  (the resume and repeat tests bound it).
* **deterministic** (`--deterministic`, `Reconstructor(deterministic=True)`): bitwise-identical
  results on any CPU, whatever the machine's thread count: the run uses one intra-op thread
  (every reduction in one fixed order) and torch's deterministic algorithms. It costs the
  speed of the other threads. CPU only: on CUDA the area resize's backward (adaptive average
  pooling) accumulates with atomics, so no bitwise promise can be kept there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.runtime.devices import cpu_features

__all__ = ["MKL_REPRODUCIBLE", "check", "configure_process", "promise", "reproducible_run"]

#: Intel MKL's reproducibility setting applied by `configure_process` (unless the user set one):
#: the best code path for this CPU ("AUTO"), bitwise reproducible whatever the thread count and
#: the operands' alignment ("STRICT").
MKL_REPRODUCIBLE = "AUTO,STRICT"


def configure_process() -> None:
    """Make the process's math libraries deterministic at its thread count (the default promise).

    Call it at program start, before the first matrix product: MKL reads `MKL_CBWR` once, at
    its first call (a value already in the environment is kept, e.g. `MKL_CBWR=AUTO` to trade
    the promise for MKL's fastest paths). Re-setting torch's thread count to itself also
    switches MKL's dynamic threading off (torch does so whenever the count is set), so MKL no
    longer picks a thread count per call. The `lbrgm-fast` command and the bench scripts call
    this; a library caller may.
    """
    os.environ.setdefault("MKL_CBWR", MKL_REPRODUCIBLE)
    torch.set_num_threads(torch.get_num_threads())


def check(deterministic: bool, device: torch.device) -> None:
    """Raise UserError when `deterministic` cannot be kept on `device`."""
    if deterministic and device.type != "cpu":
        raise UserError(
            f"--deterministic is for CPU runs; on {device.type} the area resize's backward accumulates with atomics, "
            "so results are reproducible only up to rounding"
        )


@contextmanager
def reproducible_run(deterministic: bool) -> Iterator[None]:
    """The settings of the promise, for the duration of one run; the caller's are restored.

    oneDNN's deterministic attribute is on in both promises; `deterministic` adds one intra-op
    thread and torch's deterministic algorithms.
    """
    threads = torch.get_num_threads()
    algorithms = torch.are_deterministic_algorithms_enabled()
    onednn = torch.backends.mkldnn.deterministic
    # The attribute alone: torch.backends.mkldnn.flags() also sets TF32 and warns about it.
    torch.backends.mkldnn.deterministic = True
    if deterministic:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.backends.mkldnn.deterministic = onednn
        if deterministic:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(algorithms)


def promise(deterministic: bool, device: torch.device) -> dict[str, object]:
    """How reproducible a run is, for its report: the promise and the settings it rests on."""
    return {
        "promise": "bitwise on any thread count (deterministic)" if deterministic
        else "same seed, machine, software and thread count: same result up to rounding, bitwise where the math libraries are deterministic",
        "deterministic": deterministic,
        "device": str(device),
        "threads": 1 if deterministic else torch.get_num_threads(),
        "cpu_capability": cpu_features().capability,
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }
