"""Does the --samples std map point at the errors?

    nice python bench/bench_uncertainty.py [--generator tiny32] [--targets 3] [--samples 4]
        [--steps 100] [--out bench/results/uncertainty]

In-range targets (`evaluate.in_range_targets`, as `lbrgm-fast eval --in-range`), restored with
`Reconstructor.run(..., samples=K)` (L-BRGM authors preset, `--early-stop` as given; φ a seeded
random VGG16 at 64 px). Per image, the Spearman rank
correlation, over the missing region's pixels (super-resolution: every pixel), between the
samples' per-pixel std (`result.std`) and the per-pixel error (root mean over the channels of
the squared difference to the ground truth) of the restoration (`result.images`, the
best-scored sample) and of the samples' mean; then the mean over images. Writes <out>.md/.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import nvidia_generator  # noqa: E402 - the fixtures' loader

from lbrgm_fast.bench import machine_description  # noqa: E402
from lbrgm_fast.evaluate import in_range_targets, task_operator  # noqa: E402
from lbrgm_fast.perceptual import VGG16Features  # noqa: E402
from lbrgm_fast.reconstruct import Reconstructor  # noqa: E402

TASKS = {
    "tiny32": ("inpaint:right-half", "inpaint:eyes", "inpaint:mouth", "superres:2", "superres:4"),
    "ffhqlike64": ("inpaint:right-half", "inpaint:eyes", "inpaint:mouth", "superres:4", "superres:8"),
}


def per_pixel_error(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[B, H, W]: root mean over the channels of the squared difference (the std's reduction)."""
    return (images.double() - truth.double()).square().mean(dim=1).sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="tiny32", choices=sorted(TASKS))
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--early-stop", default="auto", choices=["auto", "objective", "holdout", "none"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/uncertainty"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = nvidia_generator(args.generator)
    res = G.img_resolution
    truth = torch.stack([t.image for t in in_range_targets(G, args.targets, seed=0)])
    rec = Reconstructor(G, VGG16Features.random(0, resolution=64), steps=args.steps, candidates=args.candidates, log_every=10,
                        early_stop=args.early_stop)
    cells = []
    for task in TASKS[args.generator]:
        op = task_operator(task, res)
        region = (torch.ones(res, res) if op.observed() is None else 1 - op.observed()[0, 0]).bool().numpy()
        with torch.no_grad():
            y = op(truth)
        result = rec.run(y, op, seed=0, samples=args.samples)
        errors = {"restored": per_pixel_error(result.images, truth), "mean": per_pixel_error(result.samples.mean(dim=1), truth)}
        rho = {name: [float(spearmanr(result.std[b].numpy()[region], e[b].numpy()[region]).statistic) for b in range(len(truth))]
               for name, e in errors.items()}
        cells.append({"task": task, "rule": result.early_stop, "rho": rho,
                      "mean_std": [float(result.std[b].numpy()[region].mean()) for b in range(len(truth))]})
        print(task, {k: np.round(v, 3).tolist() for k, v in rho.items()}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(cells))
    lines = [
        "# Does the samples' std point at the errors?",
        "",
        f"- date: {datetime.date.today()}; machine: {machine_description(torch.device('cpu'))} ({os.cpu_count()} CPUs), "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        f"- command: `nice python bench/bench_uncertainty.py --generator {args.generator} --targets {args.targets} "
        f"--samples {args.samples} --steps {args.steps} --candidates {args.candidates} --early-stop {args.early_stop}`",
        f"- setup: {args.generator} fixture, {args.targets} in-range targets, L-BRGM authors preset, early stopping "
        f"'{cells[0]['rule']}', φ random VGG16 at 64 px; Spearman ρ per image over the missing region's pixels "
        "(super-resolution: all), mean (min … max) over the images",
        "",
        "| task | ρ(std, error of restored.png) | ρ(std, error of mean.png) | mean std in the region |",
        "|---|---:|---:|---:|",
    ]
    for c in cells:
        r, m = c["rho"]["restored"], c["rho"]["mean"]
        lines.append(f"| {c['task']} | {np.mean(r):.3f} ({min(r):.2f} … {max(r):.2f}) | {np.mean(m):.3f} ({min(m):.2f} … {max(m):.2f}) "
                     f"| {np.mean(c['mean_std']):.4f} |")
    everything = [v for c in cells for v in c["rho"]["restored"]]
    lines += ["", f"Over every image and task: mean ρ(std, error of restored.png) = {np.mean(everything):.3f}."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
