"""Per-phase wall time and peak memory, recorded by the runtime itself.

Phases nest freely and accumulate: entering "optimise" twice adds both durations. A nested
phase's time is also its parent's: the Reconstructor's "optimise" includes "compile" (the first
calls of a compiled or captured step) and "monitor" (best-iterate checks). On CUDA the device is
synchronised at phase boundaries (only there), so a phase's time includes the kernels it queued;
a phase inside the optimisation loop, which must not wait for the device, is timed with CUDA
events instead (`phase(name, sync=False)`) and read back by the next `snapshot()` / `report()`.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


def peak_host_memory_bytes() -> int:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


@dataclass
class Profiler:
    """Accumulates seconds per named phase; `report()` adds peak host and device memory."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Seconds per phase; event-timed phases join it at the next `snapshot()` / `report()`.
    seconds: dict[str, float] = field(default_factory=dict)
    _unread: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list, repr=False)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str, sync: bool = True) -> Iterator[None]:
        """Time the block as phase `name`. `sync=False`, on CUDA: no synchronisation; the
        phase's device time is measured between two CUDA events on the current stream. On the
        CPU both are the block's wall time."""
        if not sync and self.device.type == "cuda":
            self._read_events(finished_only=True)  # keeps the list short in a long loop
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._unread.append((name, start, end))
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _read_events(self, finished_only: bool = False) -> None:
        """Add the event-timed phases to `seconds`: all (waiting for the device), or only those
        the device has passed (`finished_only`: never waits)."""
        unread = []
        for name, start, end in self._unread:
            if finished_only and not end.query():
                unread.append((name, start, end))
                continue
            end.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + start.elapsed_time(end) / 1000
        self._unread = unread

    def snapshot(self) -> dict[str, float]:
        """The seconds per phase so far, for `report(since=...)`."""
        self._read_events()
        return dict(self.seconds)

    def report(self, since: Mapping[str, float] | None = None) -> dict[str, object]:
        """{"seconds": {phase: s}, "peak_host_memory_bytes": n, "peak_device_memory_bytes": n|None}.

        `since`: an earlier `snapshot()`; only the time spent after it is reported (phases
        that did not run since are left out). Peak memory is the process's (the device's)
        peak so far either way.
        """
        self._read_events()
        seconds = {k: v - (since or {}).get(k, 0.0) for k, v in self.seconds.items()}
        device_peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {
            "seconds": {k: round(v, 4) for k, v in seconds.items() if since is None or v > 0},
            "peak_host_memory_bytes": peak_host_memory_bytes(),
            "peak_device_memory_bytes": device_peak,
        }
