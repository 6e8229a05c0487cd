"""Restoring on a Ray cluster: images per hour with 1 and 2 workers, and Ray's cost per batch.

    python bench/bench_ray.py [--images 8] [--steps 100] [--workers 1,2] [--batch-size 1] [--cpus N]

On a local cluster of `--cpus` CPUs (default: this machine's), `run_ray_job` restores `--images`
32 px images with the tiny32 fixture generator (an engine plan with a seeded random φ at 32
px, built into a temporary folder, so nothing is downloaded): 'mouth' inpainting,
L-BRGM authors preset, 4 candidates, eager fp32 step; CPU workers share the CPUs (one
torch thread per CPU each holds: 1 worker of 2 CPUs runs 2 threads). Per worker count:

- wall: the job from `run_ray_job` to its return (workers started and loaded included), and
  images per hour from it;
- steady: images per hour from the workers' busy time (batches only: what a long job tends to);
- per batch: the worker's own time (read, restore, write) and Ray's share, the batch's time
  from given out to answer received (driver's clock) minus the worker's: scheduling and moving
  the input list and outcomes between processes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    args = parser.parse_args()

    import numpy as np
    import ray
    from PIL import Image

    import torch

    from lbrgm_fast.bench import machine_description
    from lbrgm_fast.build import build_plan
    from lbrgm_fast.job import RunOptions
    from lbrgm_fast.ray import SilentJobReporter, init_ray, run_ray_job

    worker_counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan = build_plan(ROOT / "tests/fixtures/stylegan2-ada/tiny32/network-snapshot.pkl", folder / "tiny32.plan",
                          random_perceptual_seed=0, perceptual_resolution=32)
        rng = np.random.default_rng(0)
        (folder / "in").mkdir()
        for k in range(args.images):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "in" / f"img{k}.png")

        class Last(SilentJobReporter):
            def update(self, progress) -> None:  # noqa: ANN001
                self.progress = progress

        print(f"# bench_ray {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine_description(torch.device('cpu'))}, "
              f"load {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}, ray {ray.__version__}")
        print(f"# tiny32, {args.images} images, {args.steps} steps, batch size {args.batch_size}, a cluster of {args.cpus} CPUs\n")
        print("| workers | threads per worker | wall s | images/h (wall) | images/h (steady) | batches | worker s/batch | Ray ms/batch | Ray share |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        init_ray(num_cpus=args.cpus, include_dashboard=False, configure_logging=False)  # not from the checkout: see init_ray
        try:
            for workers in worker_counts:
                options = RunOptions(inputs=[str(folder / "in")], out=folder / f"out{workers}", engine=str(plan), forward_backend="torch",
                                     mask_preset="mouth", steps=args.steps, candidates=4, log_every=10, device="cpu", compile=False,
                                     batch_size=args.batch_size)
                reporter = Last()
                start = time.perf_counter()
                outcomes = run_ray_job(options, "local", workers=workers, reporter=reporter)
                wall = time.perf_counter() - start
                assert all(o.status == "done" for o in outcomes), [o.message for o in outcomes]
                shown = reporter.progress.workers
                batches = sum(w.batches for w in shown)
                busy, compute = sum(w.busy_seconds for w in shown), sum(w.compute_seconds for w in shown)
                steady = sum(w.images_per_hour or 0 for w in shown)
                threads = "/".join(sorted({str(w.threads) for w in shown}))
                print(f"| {workers} | {threads} | {wall:.1f} | {3600 * args.images / wall:.0f} | {steady:.0f} | {batches} | {compute / batches:.2f} | "
                      f"{1000 * (busy - compute) / batches:.1f} | {(busy - compute) / busy:.2%} |")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
