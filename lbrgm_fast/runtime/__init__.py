"""The runtime between a reconstruction job and the model: engines for the forward-only phases,
and self-profiling of every phase."""

from lbrgm_fast.runtime.profiler import Profiler, peak_host_memory_bytes

__all__ = ["Profiler", "peak_host_memory_bytes"]
