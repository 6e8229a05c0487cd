"""Keeping freed host memory in the process (runtime/host_memory.py), measured by the kernel's
own count of page faults, in a fresh interpreter because the setting is process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lbrgm_fast.runtime import host_memory
from lbrgm_fast.runtime.host_memory import retained_host_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# Minor page faults per 64 MiB allocate-touch-free cycle, with glibc's defaults and inside a block
# (after a nested block has ended); how much resident memory the block's end hands back after a
# 256 MiB buffer; and how much a freed 768 MiB buffer leaves resident after the block.
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
    with retained_host_memory() as nested:
        pass
    kept = faults_per_cycle(4)
    torch.empty(256 * MIB // 4).fill_(1.0)
    inside = resident_bytes()
released = (inside - resident_bytes()) / MIB
before = resident_bytes()
torch.empty(768 * MIB // 4).fill_(1.0)  # larger than any free block the heap can hold here
held_after = (resident_bytes() - before) / MIB
print(json.dumps({
    "retained": retained, "nested": nested, "system": system, "kept": kept, "released_mib": released, "held_after_mib": held_after,
}))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt / malloc_trim are glibc's; elsewhere the setting is a no-op")
def test_freed_memory_is_reused_without_page_faults_inside_the_block_only(tmp_path: Path) -> None:
    # The allocator's own environment settings would change what "glibc's defaults" means.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    # cwd: not the repository root, whose lbrgm_fast/ folder would shadow the installed package.
    out = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["retained"] is True and probe["nested"] is True
    # By default glibc maps each 64 MiB buffer afresh: every cycle faults its pages in again
    # (16384 faults with 4 KiB pages, 32 with transparent huge pages, never none).
    assert probe["system"] >= 16
    # Retained, the same buffer is reused: (almost) no new faults, also after a nested block
    # ended (a few stray faults allowed; a buffer mapped afresh in every cycle would fail).
    assert probe["kept"] <= 0.1 * probe["system"] + 8, probe
    # Leaving the block trims the heap: the freed 256 MiB buffer leaves the resident set ...
    assert probe["released_mib"] >= 200, probe
    # ... and afterwards glibc maps a new buffer above 32 MiB on its own again and unmaps it
    # when it is freed, as by default (with the block's thresholds it would come from the heap
    # and stay resident: 768 MiB).
    assert probe["held_after_mib"] < 64, probe


def test_a_disabled_block_never_touches_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> None:
        raise AssertionError("the C library was looked up")

    monkeypatch.setattr(host_memory, "_glibc", forbidden)
    with retained_host_memory(enabled=False) as retained:
        assert retained is False
