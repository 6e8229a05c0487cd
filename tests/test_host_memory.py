"""Keeping freed host memory in the process (runtime/host_memory.py), measured by the kernel's
own count of page faults, in a fresh interpreter because the setting is process-wide."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from lbrgm_fast.runtime.host_memory import retained_host_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# Minor page faults per 64 MiB allocate-touch-free cycle, before and inside the block, and how
# much of the process's resident memory the block's end hands back after a 256 MiB buffer.
PROBE = """
import json, resource, torch
from lbrgm_fast.runtime.host_memory import retained_host_memory

MIB = 1 << 20

def faults_per_cycle(cycles):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.empty(64 * MIB // 4).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / cycles

def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

torch.set_num_threads(1)
system = faults_per_cycle(4)
with retained_host_memory() as retained:
    faults_per_cycle(8)  # warm-up: aligned requests grow the heap until freed blocks fit them
    kept = faults_per_cycle(4)
    torch.empty(256 * MIB // 4).fill_(1.0)
    inside = resident_bytes()
print(json.dumps({"retained": retained, "system": system, "kept": kept, "released_mib": (inside - resident_bytes()) / MIB}))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt / malloc_trim are glibc's; elsewhere the setting is a no-op")
def test_freed_memory_is_reused_without_page_faults_and_handed_back_at_the_end() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["retained"] is True
    # By default glibc maps each 64 MiB buffer afresh: every cycle faults its pages in again
    # (16384 faults with 4 KiB pages, fewer with huge pages, never none).
    assert probe["system"] > 0
    # Retained, the same buffer is reused: (almost) no new faults.
    assert probe["kept"] <= 0.05 * probe["system"], probe
    # Leaving the block trims the heap: the freed 256 MiB buffer leaves the resident set.
    assert probe["released_mib"] >= 200, probe


def test_disabled_block_changes_nothing() -> None:
    with retained_host_memory(enabled=False) as retained:
        assert retained is False
