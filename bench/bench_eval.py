"""`lbrgm-fast eval --in-range N --protocol quick` on the tiny32 test fixture, offline.

The fixture's generator (NVIDIA's tiny32 snapshot) with seeded *random* VGG16 (φ at 32 px) and
AlexNet weights: nothing is downloaded, so the numbers compare the methods in range on a toy
generator, not the paper's results. Writes results.csv, summary.md / .json and figures to
--out, and prints the wall time.

    python bench/bench_eval.py --images 16 --steps 40 --candidates 10 --out bench/results/eval_tiny32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lbrgm_fast import evaluate as ev
from lbrgm_fast.checkpoints import load_generator
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/eval_tiny32"))
    args = parser.parse_args()
    generator = load_generator(FIXTURE)
    perceptual, monitor = VGG16Features.random(0, resolution=32), LpipsAlex.random(0)
    tasks, methods = ev.resolve_grid("quick", None, None, generator.img_resolution)
    targets = ev.in_range_targets(generator, args.images, seed=0)
    started = time.perf_counter()
    rows = ev.evaluate(generator, perceptual, monitor, targets, tasks, methods, args.out, steps=args.steps,
                       candidates=args.candidates, batch_size=args.images, on_note=print)
    ev.write_results(rows, args.out)
    ev.write_figures(rows, targets, args.out)
    print(f"wall {time.perf_counter() - started:.1f} s for {len(rows)} cells")


if __name__ == "__main__":
    main()
