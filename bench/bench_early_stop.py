"""How close does early stopping without ground truth get to the oracle?

    python bench/bench_early_stop.py [--targets 8] [--steps 300] [--out bench/results/early_stop.md]

In-range targets (ground truth = G(M(z)) of the tiny32 fixture generator, so a perfect
restoration exists), right half missing, L-BRGM (authors preset) with a seeded random VGG16 at
64 px. For each target the same run is repeated with three rules for the kept iterate:
`oracle` (lowest MSE to the ground truth over the logged iterates: the best any rule could keep),
`holdout` (5 % of the observed pixels held out; needs no ground truth) and `none` (last iterate).
Reported: PSNR of the kept image (whole image and missing region), mean over targets.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
from pathlib import Path

import torch

from lbrgm_fast import Inpainting, Reconstructor, VGG16Features, load_generator

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl"


def psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    mse = (((a - b) ** 2) * weight).sum(dim=(1, 2, 3)) / (weight.sum() * a.shape[1])
    return -10 * torch.log10(mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/early_stop.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    G = load_generator(FIXTURE)
    with torch.no_grad():
        z = torch.randn(args.targets, G.z_dim, generator=torch.Generator().manual_seed(2024))
        truth = ((G(z) + 1) / 2).clamp(0, 1)
    op = Inpainting.from_preset("right-half", G.img_resolution)
    missing = (1 - op.mask).expand(1, 1, -1, -1)
    everywhere = torch.ones_like(missing)
    vgg = VGG16Features.random(0, resolution=64)
    mse_monitor = lambda x, y: (x - y).square().flatten(1).mean(dim=1)  # noqa: E731 - oracle by MSE

    rows = {}
    for rule in ("oracle", "holdout", "none"):
        rec = Reconstructor(G, vgg, steps=args.steps, candidates=20, log_every=10, early_stop=rule, monitor=mse_monitor)
        result = rec.run(op(truth), op, ground_truth=truth if rule == "oracle" else None, seed=0)
        rows[rule] = (
            psnr(result.images, truth, everywhere).mean().item(),
            psnr(result.images, truth, missing).mean().item(),
            sum(result.best_step) / len(result.best_step),
        )
        print(rule, rows[rule], flush=True)

    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Early stopping without ground truth vs the oracle",
        "",
        f"- date: {datetime.date.today()}; machine: {cpu}, {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        f"- command: `python bench/bench_early_stop.py --targets {args.targets} --steps {args.steps}`",
        f"- setup: tiny32 fixture generator, {args.targets} in-range targets G(M(z)), right half missing, "
        f"L-BRGM authors preset, random VGG16 at 64 px, {args.steps} steps, iterates checked every 10 steps",
        "",
        "| rule | needs ground truth | PSNR whole image (dB) | PSNR missing half (dB) | mean kept step |",
        "|---|---|---|---|---|",
    ]
    for rule, (whole, miss, step) in rows.items():
        lines.append(f"| {rule} | {'yes' if rule == 'oracle' else 'no'} | {whole:.2f} | {miss:.2f} | {step:.0f} |")
    gap = rows["oracle"][1] - rows["holdout"][1]
    lines += ["", f"Holdout is {gap:.2f} dB below the oracle in the missing region "
              f"(last iterate: {rows['oracle'][1] - rows['none'][1]:.2f} dB below)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
