"""The runtime between a reconstruction job and the model: engines for the forward-only phases,
self-profiling of every phase, the device choice, and the host allocator setting of CPU runs."""

from lbrgm_fast.runtime.devices import resolve_device
from lbrgm_fast.runtime.host_memory import retained_host_memory
from lbrgm_fast.runtime.profiler import Profiler, peak_host_memory_bytes

__all__ = ["Profiler", "peak_host_memory_bytes", "resolve_device", "retained_host_memory"]
