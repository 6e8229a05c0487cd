"""Keep freed host memory in the process while a CPU job runs (glibc only).

Why: PyTorch's CPU allocator takes every buffer from the C library's `malloc`. glibc serves a
large request (above its mmap threshold, 32 MiB at most by default) with a fresh mapping from
the kernel and unmaps it when freed, and gives the free top of its heap back to the kernel once
it exceeds its trim threshold. A gradient step allocates and frees the same large activations
on every step, so every step pays page faults and the kernel's zeroing of those pages again
(measured in bench/results/host_memory.md).

Raising both thresholds makes glibc serve those buffers from its heap and keep them after they
are freed, so the next step reuses memory that is already mapped. The cost is that the process
holds on to its largest heap while the block runs. On leaving the (outermost) block, the
thresholds are set to the ceilings glibc's own adjustment grows them to in a long-running
process (32 MiB and 64 MiB on 64-bit systems) and the heap's free memory is handed back
(`malloc_trim`); glibc's dynamic adjustment itself stays off, since `mallopt` cannot turn it
back on. The setting is process-wide, so a library must not make it unasked: the job does it
only when its options say so (the command line's default). It overrides `MALLOC_MMAP_THRESHOLD_`
/ `MALLOC_TRIM_THRESHOLD_` given in the environment, and does nothing (and no harm) when
another allocator (jemalloc, tcmalloc) is preloaded in glibc's place.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Requests at least this large are still mapped on their own: one such buffer costs little
#: to map next to the work done on it, and a heap hole of that size could go unused.
MMAP_THRESHOLD_BYTES = 1 << 30
#: Free memory at the top of the heap is kept up to this much (mallopt takes an int).
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
#: What glibc's dynamic thresholds grow to at most on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX
#: and twice it). Some glibc versions refuse an mmap threshold above the first; there, buffers
#: above 32 MiB are still mapped afresh and only the smaller ones are kept.
GLIBC_DYNAMIC_MMAP_MAX = 32 << 20
GLIBC_DYNAMIC_TRIM_MAX = 64 << 20

# Blocks may nest or overlap (a caller's block around a job's): only the outermost one sets and
# restores the thresholds.
_lock = threading.Lock()
_depth = 0


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (which has `mallopt`), else None."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
    except OSError:
        return None
    # Only glibc has gnu_get_libc_version; other C libraries lack it, and mallopt's parameters.
    if not all(hasattr(libc, symbol) for symbol in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def _set_thresholds(libc: ctypes.CDLL, mmap_bytes: int, trim_bytes: int) -> bool:
    """True if glibc took both values."""
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes))


def release_freed_host_memory() -> None:
    """Give the heap's free memory back to the kernel now (glibc's `malloc_trim(0)`); no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def retained_host_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed host memory stays in the process (see the module docstring).

    Yields whether retention is in effect: False when `enabled` is False (nothing is touched),
    where the C library is not glibc, or where glibc refused the thresholds.
    """
    global _depth
    libc = _glibc() if enabled else None
    retained = False
    if libc is not None:
        with _lock:
            retained = _depth > 0 or _set_thresholds(libc, MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES) or _set_thresholds(
                libc, GLIBC_DYNAMIC_MMAP_MAX, TRIM_THRESHOLD_BYTES
            )
            if retained:
                _depth += 1
    try:
        yield retained
    finally:
        if retained:
            assert libc is not None
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _set_thresholds(libc, GLIBC_DYNAMIC_MMAP_MAX, GLIBC_DYNAMIC_TRIM_MAX)
                    libc.malloc_trim(0)
