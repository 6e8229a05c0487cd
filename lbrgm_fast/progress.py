"""Progress reports of the loop, read from the device without waiting for it.

Every `log_every` steps the loop records the loss terms and the score on the device
(`ReconstructionState.log`) and pushes that log here: on CUDA its values start copying to
pinned host memory without blocking, and they are read when the next log is pushed, when the
device is long past them. So a report arrives one log interval late, and a batch whose every
sample has stopped (non-finite loss) runs one interval more before the loop learns of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lbrgm_fast.objective import TERM_NAMES
from lbrgm_fast.state import SCORE, ReconstructionState


@dataclass
class ProgressReport:
    """What the loop reports every `log_every` steps (host values)."""

    step: int
    steps: int
    terms: dict[str, list[float]]  # name -> per-sample values
    score: list[float] | None  # early-stopping score per sample (LPIPS or holdout error)
    best_step: list[int]
    images: torch.Tensor | None = None  # current images [B, 3, H, W] in [-1, 1], on the device


@dataclass
class _HostCopy:
    """One log's values on their way to the host (`start`), read with `wait`."""

    step: int
    values: torch.Tensor  # [terms + 1, B]: TERM_NAMES, then the score
    best_step: torch.Tensor  # [B]
    alive: torch.Tensor  # [B]
    images: torch.Tensor | None  # on the device, for `ProgressReport.images`
    copied: torch.cuda.Event | None  # CUDA: recorded after the copies

    @classmethod
    def start(cls, step: int, values: torch.Tensor, best_step: torch.Tensor, alive: torch.Tensor, images: torch.Tensor | None) -> _HostCopy:
        """On CUDA: non-blocking copies into pinned host memory, then an event; elsewhere the
        values are on the host already (fresh tensors, which the loop replaces, never changes)."""
        if values.device.type != "cuda":
            return cls(step, values, best_step, alive, images, None)
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in (values, best_step, alive)]
        copied = torch.cuda.Event()
        copied.record()
        return cls(step, *host, images, copied)

    def wait(self) -> None:
        """Until the copies have landed (long done when read one log later)."""
        if self.copied is not None:
            self.copied.synchronize()


class Reports:
    """Progress reports one log late: `push` hands on the previous log and keeps the new one,
    `flush` hands on the kept one. Both return whether any sample was still finite then."""

    def __init__(self, steps: int, scored: bool, on_progress: Callable[[ProgressReport], None] | None) -> None:
        self.steps, self.scored, self.on_progress = steps, scored, on_progress
        self.pending: _HostCopy | None = None

    def push(self, state: ReconstructionState, images: torch.Tensor) -> bool:
        """Start reading the log `state.log` just made (its images: those of that iterate)."""
        alive = self.flush()
        # Every step returns new image tensors (a CUDA-graph step returns a copy of its static
        # output), so the reference stays this log's until it is handed on.
        shown = None if self.on_progress is None else images
        self.pending = _HostCopy.start(state.history_steps[-1], state.history[-1], state.best_step, state.alive, shown)
        return alive

    def flush(self) -> bool:
        read, self.pending = self.pending, None
        if read is None:
            return True
        read.wait()
        if self.on_progress is not None:
            self.on_progress(
                ProgressReport(
                    step=read.step,
                    steps=self.steps,
                    terms={name: read.values[i].tolist() for i, name in enumerate(TERM_NAMES)},
                    score=read.values[SCORE].tolist() if self.scored else None,
                    best_step=read.best_step.tolist(),
                    images=read.images,
                )
            )
        return bool(read.alive.any())


@dataclass
class WorkerProgress:
    """One worker of a cluster job (`lbrgm_fast.ray`): where it runs and what it has done."""

    index: int
    pid: int | None  # its process (None until it has answered; changes when Ray restarts it)
    host: str
    threads: int | None = None  # its torch CPU threads (the CPUs Ray gave it)
    images: int = 0  # inputs it has finished (done or failed)
    batches: int = 0  # batches it has finished
    busy_seconds: float = 0.0  # its finished batches, from given out to answer received (the driver's clock)
    #: The part of `busy_seconds` spent inside the worker (restoring, reading, writing); the rest
    #: is Ray's: scheduling, moving the batch's input list and outcomes between processes.
    compute_seconds: float = 0.0
    running: list[str] = field(default_factory=list)  # names of the batch it is restoring now

    @property
    def images_per_hour(self) -> float | None:
        return None if not self.images or self.busy_seconds <= 0 else 3600 * self.images / self.busy_seconds


@dataclass
class JobProgress:
    """A whole job across its workers: inputs finished out of `total`, and each worker's share."""

    total: int
    done: int
    failed: int
    elapsed: float  # seconds since the workers started
    workers: list[WorkerProgress]

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the job's rate so far (None before the first input finishes)."""
        finished = self.done + self.failed
        return None if not finished else self.elapsed / finished * (self.total - finished)
