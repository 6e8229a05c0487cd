"""What a job's later batches pay for the compiled step: reused, or compiled again.

    python bench/bench_reuse.py [--shape ffhqlike64] [--steps 4] [--threads 1] [--out bench/results/reuse.md]

Three batches of one image each (other observations, same shape, 'eyes' inpainting, L-BRGM
authors preset, random weights of the shape, φ at 256 px), each restored with a compiled step
for `--steps` steps (3 candidates, no early stopping):

1. a first batch on a new Reconstructor: Dynamo traces the step and Inductor compiles it (into
   an empty temporary Inductor cache, so this is a first run's cost);
2. a second batch on the same Reconstructor: the latents and Adam are refilled in place and the
   compiled step is reused;
3. a third batch on a new Reconstructor: what every batch cost before the reuse — Dynamo
   traces again, Inductor finds its code in the on-disk cache.

Reported per batch: wall seconds of `run`, the profiler's "compile" and "optimise" phases.
Compare batches 2 and 3.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="ffhqlike64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reuse.md"))
    args = parser.parse_args()

    from lbrgm_fast.runtime.step import configure_compile_cache

    cache_dir = configure_compile_cache(tempfile.mkdtemp(prefix="lbrgm-inductor-"))  # before lpips is imported
    import torch

    from lbrgm_fast import Inpainting, Reconstructor
    from lbrgm_fast.bench import SHAPES, machine_description
    from lbrgm_fast.model import Generator
    from lbrgm_fast.perceptual import VGG16Features
    from lbrgm_fast.runtime import Profiler
    from lbrgm_fast.runtime.step import StepOptions

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    G = Generator(SHAPES[args.shape]).eval().requires_grad_(False)
    vgg = VGG16Features.random(0, 256)
    op = Inpainting.from_preset("eyes", G.img_resolution)
    with torch.no_grad():
        truths = ((G(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1))) + 1) / 2).clamp(0, 1)

    def reconstructor() -> Reconstructor:
        return Reconstructor(G, vgg, steps=args.steps, candidates=3, early_stop="none",
                             step_options=StepOptions(compile=True), profiler=Profiler(torch.device("cpu")))

    load = os.getloadavg()
    rec = reconstructor()
    rows = []
    for label, batch in (("1: new Reconstructor, empty cache", 0), ("2: same Reconstructor (reused)", 1), ("3: new Reconstructor, warm cache", 2)):
        if batch == 2:
            rec = reconstructor()
        before = dict(rec.profiler.report()["seconds"])
        start = time.perf_counter()
        rec.run(op(truths[batch : batch + 1]), op, seed=batch)
        wall = time.perf_counter() - start
        after = rec.profiler.report()["seconds"]
        compile_s, optimise_s = (after.get(name, 0.0) - before.get(name, 0.0) for name in ("compile", "optimise"))
        rows.append((label, wall, compile_s, optimise_s))

    lines = [
        "# Compiled step: reused for a job's next batch vs compiled again",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_description(torch.device('cpu'))}; {platform.machine()}, Python {platform.python_version()}",
        f"- command: `python bench/bench_reuse.py --shape {args.shape} --steps {args.steps} --threads {args.threads}` (from the repository root)",
        f"- load average at start {load[0]:.2f}; Inductor cache {cache_dir} (empty at the start)",
        f"- {args.shape}, random weights, φ at 256 px, 'eyes' inpainting, L-BRGM (authors), {args.steps} compiled steps per batch",
        "",
        "| batch | run s | compile phase s | optimise phase s (includes compile) |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {wall:.1f} | {compile_s:.1f} | {optimise:.1f} |" for label, wall, compile_s, optimise in rows],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
