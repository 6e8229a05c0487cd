"""The CPU step with glibc's default allocator settings (as the research code runs) and with
freed host memory kept in the process (as `lbrgm-fast run` runs), eager and compiled.

    python bench/bench_host_memory.py [--out bench/results/host_memory.md] [--shapes ffhqlike64,ffhq256]
        [--rounds 4] [--steps 5] [--threads 2]

The setting is process-wide and cannot be undone inside a process, so each round runs
bench/bench_loop.py twice, in two fresh processes, once per setting, alternating which goes
first (ABBA) so that a drift of the shared machine's speed falls on both alike. Within each
process, eager and compiled are timed in turn as usual. Reported per shape: the median over
the rounds of each process's median ms/step, and three ratios: what keeping memory does to the
eager step, what compiling adds on top, and the whole: lbrgm-fast's CPU step (compiled, memory
kept) against the research code's (eager, glibc defaults).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("system", "retained")
FLAGS = {"system": "--no-retain-host-memory", "retained": "--retain-host-memory"}
MODES = ("eager-fp32", "compiled-fp32")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown report (default: stdout only)")
    parser.add_argument("--shapes", default="ffhqlike64,ffhq256")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return parser.parse_args(argv)


def run_once(setting: str, args: argparse.Namespace, scratch: Path) -> list[dict]:
    out = scratch / f"{setting}.json"
    command = [
        sys.executable, "bench/bench_loop.py", FLAGS[setting], "--shapes", args.shapes,
        "--modes", ",".join(MODES), "--steps", str(args.steps), "--threads", str(args.threads), "--json", str(out),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())["results"]


def markdown(samples: dict[tuple[str, str, str], list[dict]], args: argparse.Namespace, header: list[str]) -> str:
    def median(shape: str, mode: str, setting: str, key: str) -> float:
        return statistics.median(r[key] for r in samples[(shape, mode, setting)])

    lines = ["# CPU step: glibc's allocator defaults vs freed host memory kept", "", *header, ""]
    lines += [
        "| shape | mode | host memory | ms/step (median of rounds) | each round's ms/step | peak memory MiB |",
        "|---|---|---|---:|---|---:|",
    ]
    shapes = args.shapes.split(",")
    for shape in shapes:
        for setting in SETTINGS:
            for mode in MODES:
                rounds = ", ".join(f"{r['ms_per_step']:.0f}" for r in samples[(shape, mode, setting)])
                lines.append(
                    f"| {shape} | {mode} | {setting} | {median(shape, mode, setting, 'ms_per_step'):.1f} | {rounds} "
                    f"| {median(shape, mode, setting, 'peak_memory_bytes') / 2**20:.0f} |"
                )
    lines += [
        "",
        "| shape | eager: kept / system | compiled / eager, both kept | compiled kept / eager system (lbrgm-fast vs research code) |",
        "|---|---:|---:|---:|",
    ]
    for shape in shapes:
        eager_system = median(shape, "eager-fp32", "system", "ms_per_step")
        eager_kept = median(shape, "eager-fp32", "retained", "ms_per_step")
        compiled_kept = median(shape, "compiled-fp32", "retained", "ms_per_step")
        lines.append(
            f"| {shape} | {eager_system / eager_kept:.2f}x | {eager_kept / compiled_kept:.2f}x | {eager_system / compiled_kept:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    from lbrgm_fast.bench import machine_description

    torch.set_num_threads(args.threads)  # as in the measured processes, for machine_description
    samples: dict[tuple[str, str, str], list[dict]] = {}
    load_start = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.rounds):
            for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
                for r in run_once(setting, args, Path(scratch)):
                    samples.setdefault((r["shape"], r["mode"], setting), []).append(r)
                print(f"round {i + 1}/{args.rounds} {setting}: done", file=sys.stderr)
    header = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC (run took {(time.time() - started) / 60:.1f} min)",
        f"- machine: {machine_description(torch.device('cpu'))}; {platform.machine()}, Python {platform.python_version()}",
        f"- command: `python bench/bench_host_memory.py {' '.join(argv)}` (from the repository root)",
        f"- torch threads: {args.threads}; load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}",
        (
            f"- {args.rounds} rounds; each round two fresh processes of `bench/bench_loop.py` (one per setting, order "
            f"alternating), each timing eager and compiled in turn over {args.steps} steps (median)"
        ),
    ]
    report = markdown(samples, args, header)
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
