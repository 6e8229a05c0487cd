"""`lbrgm-fast eval --in-range N` on a test-fixture generator, offline.

A fixture generator (tiny32: NVIDIA's tiny32 snapshot, read by the pickle loader; ffhqlike64:
the official implementation's 64 px FFHQ-shaped network with random weights, built from its
weights.npz as tests/reference.py does) with seeded *random* VGG16 (φ at --phi-resolution) and
AlexNet weights: nothing is downloaded, so the numbers compare the methods in range on toy
generators, not the paper's results. Writes results.csv, summary.md / .json,
time_to_quality.json and figures to --out, and prints the wall time.

    python bench/bench_eval.py --generator tiny32 --images 16 --steps 40 --candidates 10 --out bench/results/eval_tiny32
    python bench/bench_eval.py --generator ffhqlike64 --images 6 --steps 300 --out /tmp/eval64
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

from lbrgm_fast import evaluate as ev
from lbrgm_fast.bench import machine_description
from lbrgm_fast.checkpoints import load_generator
from lbrgm_fast.model import Generator
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.runtime.step import StepOptions

TESTS = Path(__file__).resolve().parents[1] / "tests"


def fixture_generator(name: str) -> Generator:
    """The fixture generator `name` (tiny32 from its pickle, ffhqlike64 from weights.npz)."""
    if name == "tiny32":
        return load_generator(TESTS / "fixtures" / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl")
    sys.path.insert(0, str(TESTS))  # the tests' own builder of the weights.npz fixtures
    from reference import nvidia_generator

    return nvidia_generator(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=("tiny32", "ffhqlike64"), default="tiny32")
    parser.add_argument("--phi-resolution", type=int, default=None, help="φ's input side (default: the generator's)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--tasks", default=None, help="comma-separated (default: the quick protocol's)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: the quick protocol's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: every image at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the eager step's (fp32: the research code's numerics)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/eval_tiny32"))
    args = parser.parse_args()
    generator = fixture_generator(args.generator)
    perceptual = VGG16Features.random(0, resolution=args.phi_resolution or generator.img_resolution)
    monitor = LpipsAlex.random(0)
    split = lambda text: text.split(",") if text else None
    tasks, methods = ev.resolve_grid("quick", split(args.tasks), split(args.methods), generator.img_resolution)
    targets = ev.in_range_targets(generator, args.images, seed=args.seed)
    started = time.perf_counter()
    rows = ev.evaluate(generator, perceptual, monitor, targets, tasks, methods, args.out, steps=args.steps, candidates=args.candidates,
                       seed=args.seed, batch_size=args.batch_size or args.images, step_options=StepOptions(precision=args.precision),
                       on_note=print)
    _, curves = ev.write_results(rows, args.out)
    ev.write_figures(rows, targets, args.out, curves)
    wall = time.perf_counter() - started
    # The figures name no machine: say which one measured them, beside them.
    (args.out / "machine.md").write_text(f"- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine_description(torch.device('cpu'))}; "
                                         f"load average {os.getloadavg()[0]:.1f}; `python bench/bench_eval.py {' '.join(sys.argv[1:])}`; "
                                         f"wall {wall:.1f} s for {len(rows)} cells\n")
    print(f"wall {wall:.1f} s for {len(rows)} cells")


if __name__ == "__main__":
    main()
