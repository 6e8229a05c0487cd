"""Time the L-BRGM gradient step: eager float32 (the research code's numerics) against the
compiled and mixed-precision steps, measured in the same run, and write a Markdown report.

    python bench/bench_loop.py [--out bench/results/loop.md] [--json PATH] [--device cpu|cuda]
        [--shapes ffhqlike64,ffhq256] [--modes eager-fp32,compiled-fp32] [--batch-sizes 1]
        [--steps 5] [--threads N] [--fresh-cache] [--profile DIR] [--no-retain-host-memory]

Run from the repository root (imports the installed lbrgm_fast, nothing from tests/). What it
measures is `lbrgm_fast.bench.run_bench` (see its docstring): the real L-BRGM step on random
weights of each model shape, φ at 256 px, 'eyes' inpainting.

Threads (CPU): unless `--threads` is given, 1 when the 1-minute load average is above 1.5 (a
shared machine, where OpenMP threads spin-waiting on a busy core make torch many times slower),
else every CPU. `--fresh-cache` compiles into an empty temporary Inductor cache, so the compile
times are those of a first run; otherwise torch's on-disk cache may hold earlier compilations.
`--no-retain-host-memory` leaves glibc's allocator settings as they are (as the research code
runs); by default freed host memory stays in the process, as `lbrgm-fast run` does on a CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

GOALS = """Goals (issue 5; benchmarks, not tests): CPU (2 cores): compiled >= 1.5x eager steps/s at
the ffhqlike64 and ffhq256 shapes. H100, 1024 config-f: batch 1 <= 8 ms per step; batch 8 <= 3 ms
per image-step; peak memory <= 10 GB at batch 1."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown report (default: stdout only)")
    parser.add_argument("--json", type=Path, help="also write the raw results as one JSON document")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shapes", default="ffhqlike64,ffhq256")
    parser.add_argument("--modes", default=None, help="comma-separated; default: the device's default modes")
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fresh-cache", action="store_true", help="compile into an empty Inductor cache")
    parser.add_argument("--profile", type=Path, default=None, help="also profile a few steps of each measurement into DIR")
    parser.add_argument(
        "--retain-host-memory", action=argparse.BooleanOptionalAction, default=True,
        help="CPU: keep freed host memory in the process, every mode (as `lbrgm-fast run`; default) or leave glibc's settings",
    )
    return parser.parse_args(argv)


def choose_threads(requested: int | None) -> int:
    if requested is not None:
        return requested
    return 1 if os.getloadavg()[0] > 1.5 else (os.cpu_count() or 1)


def _cell(value: object, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(results: list[dict], header: list[str]) -> str:
    lines = ["# L-BRGM gradient step: eager vs compiled", "", *header, "", GOALS, ""]
    lines += [
        "| shape | batch | mode | ms/step | CPU ms/step | image-steps/s | peak memory MiB | GFLOP/step | TFLOP/s | vs eager (wall) | vs eager (CPU time) | compile s | loss finite |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    eager_cpu = {(r["shape"], r["batch"]): r["cpu_ms_per_step"] for r in results if r["mode"] == "eager-fp32"}
    for r in results:
        base = eager_cpu.get((r["shape"], r["batch"]))
        cpu_speedup = None if base is None or r["cpu_ms_per_step"] is None else base / r["cpu_ms_per_step"]
        peak = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['mode']} | {r['ms_per_step']:.1f} | {_cell(r['cpu_ms_per_step'], '.1f')} "
            f"| {r['image_steps_per_s']:.3f} | {_cell(peak, '.0f')} | {r['gflop_per_step']:.1f} | {r['tflops']:.4f} "
            f"| {_cell(r['speedup_vs_eager'], '.2f')} | {_cell(cpu_speedup, '.2f')} | {r['compile_seconds']:.1f} | {r['loss_finite']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from lbrgm_fast.runtime.step import configure_compile_cache

    # Before anything imports lpips, which fixes Inductor's cache folder.
    cache_dir = configure_compile_cache(tempfile.mkdtemp(prefix="lbrgm-inductor-") if args.fresh_cache else None)
    import torch
    from rich.console import Console

    from lbrgm_fast.bench import CUDA_ROUNDS, BenchOptions, machine_description, render_table, run_bench

    threads = choose_threads(args.threads) if args.device == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    options = BenchOptions(
        shapes=tuple(args.shapes.split(",")),
        modes=None if args.modes is None else tuple(args.modes.split(",")),
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        steps=args.steps,
        device=args.device,
        profile_dir=args.profile,
        retain_host_memory=args.retain_host_memory,
    )
    load_start = os.getloadavg()
    started = time.time()
    console = Console(stderr=True)
    results = run_bench(options, on_result=lambda r: console.print(json.dumps(r)))
    console.print(render_table(results))
    header = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC (run took {(time.time() - started) / 60:.1f} min)",
        f"- machine: {machine_description(torch.device(args.device))}; {platform.machine()}, Python {platform.python_version()}",
        f"- command: `python bench/bench_loop.py {' '.join(argv)}` (from the repository root)",
        f"- torch threads: {threads}; load average at start {load_start[0]:.2f} (5/15 min {load_start[1]:.2f}/{load_start[2]:.2f}), at end {os.getloadavg()[0]:.2f}",
        f"- Inductor cache: {cache_dir}{' (fresh: first-run compile times)' if args.fresh_cache else ''}",
        (
            f"- modes timed in turn, round after round, after every mode's warm-up / compile steps; CPU: {options.steps} rounds "
            "of one step per mode, medians (CPU ms = process CPU time, not inflated by waiting for a core); CUDA: "
            f"{CUDA_ROUNDS} rounds of an unsynchronised block of {options.steps} steps per mode, median of the blocks' means"
        ),
        "- weights: random (seeded); φ: VGG16 at 256 px; operator: 'eyes' inpainting; settings: L-BRGM (authors)",
        f"- host memory (CPU): {'freed memory kept in the process, every mode' if any(r['host_memory_retained'] for r in results) else 'glibc defaults'}",
    ]
    report = markdown(results, header)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
