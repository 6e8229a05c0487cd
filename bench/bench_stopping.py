"""Which iterate to keep without ground truth: every rule's pick vs the oracle and the last iterate.

    nice python bench/bench_stopping.py [--generators tiny32,ffhqlike64] [--targets 3] [--runs 3]
        [--steps 150] [--out bench/results/stopping]

In-range targets (G(M(z)) drawn as `lbrgm-fast eval --in-range` draws them: `evaluate.in_range_targets`),
so a perfect restoration exists. Per generator (the test fixtures tiny32 and ffhqlike64) and task
(masks right-half, eyes, mouth; super-resolution ×2 and ×4 on tiny32, ×4 and ×8 on ffhqlike64),
every target is restored `--runs` times (run r: seed r's candidates, as `--restarts` does), all
rows in one batch, L-BRGM (authors preset), φ a seeded random VGG16 at 64 px, LPIPS(alex) a
seeded random AlexNet (nothing is downloaded: the fixtures are random networks anyway).

One run with the rule "none" records, at every step and for every row, the missing-region PSNR
and LPIPS(alex) of the iterate against the ground truth (super-resolution: the whole image;
metrics.py's definitions) and the loss terms, so each rule's pick is read off the same
trajectory:

* last: the last iterate;
* oracle: the best LPIPS(alex) (the papers' rule; needs the ground truth);
* min-J: the lowest objective J;
* min-data: the lowest data term λpix·pixel + λvgg·perceptual;
* plateau-W-ε: stop once the lowest data term so far has not dropped by ε (relative) over the
  last W steps; keep the iterate with that lowest data term;
* runs: lowest J (what `--restarts` keeps with rule "none"), medoid (the run whose last iterate
  is closest, in the missing region, to the runs' mean: agreement between runs) and the runs'
  per-pixel mean (what `--samples` writes as mean.png; a blend, not a pick). These cost `--runs`×.

The holdout rule changes the trajectory (its pixel term leaves pixels out), so a second run with
rule "holdout" gives its pick. Writes <out>.md (tables) and <out>.json (every row's numbers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import nvidia_generator  # noqa: E402 - the fixtures' loader

from lbrgm_fast.bench import machine_description  # noqa: E402
from lbrgm_fast.early_stopping import agreement_scores  # noqa: E402
from lbrgm_fast.evaluate import in_range_targets, task_operator  # noqa: E402
from lbrgm_fast.methods import method_settings  # noqa: E402
from lbrgm_fast.metrics import masked_mean, psnr_from_mse  # noqa: E402
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features  # noqa: E402
from lbrgm_fast.progress import ProgressReport  # noqa: E402
from lbrgm_fast.reconstruct import Reconstructor  # noqa: E402

TASKS = {
    "tiny32": ("inpaint:right-half", "inpaint:eyes", "inpaint:mouth", "superres:2", "superres:4"),
    "ffhqlike64": ("inpaint:right-half", "inpaint:eyes", "inpaint:mouth", "superres:4", "superres:8"),
}
#: (W, ε) of the plateau rules measured.
PLATEAUS = ((20, 1e-2), (50, 1e-3))


class Region:
    """Missing-region PSNR and LPIPS(alex) of images against their ground truths (metrics.py)."""

    def __init__(self, truth: torch.Tensor, missing: torch.Tensor, alex: LpipsAlex) -> None:
        self.truth, self.missing, self.alex = truth, missing, alex  # [B, 3, H, W] in [0, 1]; [1, 1, H, W]

    @torch.no_grad()
    def __call__(self, images_01: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        mse = masked_mean((images_01 - self.truth).double().square(), self.missing.double())
        merged = images_01 * self.missing + self.truth * (1 - self.missing)  # only the region's errors count
        return psnr_from_mse(mse).numpy(), self.alex(merged * 2 - 1, self.truth * 2 - 1).double().numpy()


def run(rec: Reconstructor, y: torch.Tensor, op, seeds: list[int], region: Region) -> tuple[dict, dict, object]:
    """One batch at every step: (per-step {"psnr", "lpips"} [T, B], last images, the result)."""
    psnr, lpips, last = [], [], {}

    def on_progress(p: ProgressReport) -> None:
        images = ((p.images.float() + 1) / 2).clamp(0, 1)
        a, b = region(images)
        psnr.append(a)
        lpips.append(b)
        last["images"] = images

    result = rec.run(y, op, seed=seeds, on_progress=on_progress)
    return {"psnr": np.stack(psnr), "lpips": np.stack(lpips)}, last, result


def plateau_step(data: np.ndarray, window: int, eps: float) -> int:
    """The iterate a plateau rule keeps on a data-term curve [T]: the lowest so far when the lowest
    so far first fails to drop by `eps` (relative) over `window` steps (the last step if never)."""
    best = np.minimum.accumulate(data)
    stop = len(data) - 1
    for k in range(window, len(data)):
        if best[k - window] - best[k] < eps * best[k - window]:
            stop = k
            break
    return int(np.flatnonzero(data[: stop + 1] == best[stop])[-1])


def picks(history: dict, settings) -> dict[str, np.ndarray]:  # noqa: ANN001 - MethodSettings
    """Per single-run rule, the kept step per row (B,) from the loss history ([T, B] arrays)."""
    data = settings.pixel_weight * history["pixel"] + settings.perceptual_weight * history["perceptual"]
    last_of = lambda values: values.shape[0] - 1 - np.argmin(values[::-1], axis=0)  # noqa: E731 - ties: the later
    out = {"last": np.full(data.shape[1], data.shape[0] - 1), "min-J": last_of(history["total"]), "min-data": last_of(data)}
    for window, eps in PLATEAUS:
        out[f"plateau-{window}-{eps:g}"] = np.array([plateau_step(data[:, b], window, eps) for b in range(data.shape[1])])
    return out


def measure(name: str, task: str, args: argparse.Namespace, vgg: VGG16Features, alex: LpipsAlex) -> dict:
    G = nvidia_generator(name)
    res = G.img_resolution
    targets = in_range_targets(G, args.targets, seed=0)
    op = task_operator(task, res)
    truth = torch.stack([t.image for t in targets]).repeat_interleave(args.runs, dim=0)  # row t·R + r
    seeds = [r for _ in targets for r in range(args.runs)]
    missing = torch.ones(1, 1, res, res) if op.observed() is None else 1 - op.observed()
    region = Region(truth, missing, alex)
    with torch.no_grad():
        y = op(truth)
    settings = method_settings("lbrgm", "authors")
    common = dict(steps=args.steps, candidates=args.candidates, log_every=1)
    started = time.perf_counter()
    curves, last, plain = run(Reconstructor(G, vgg, early_stop="none", **common), y, op, seeds, region)
    seconds_none = time.perf_counter() - started
    started = time.perf_counter()
    held_curves, _, held = run(Reconstructor(G, vgg, early_stop="holdout", **common), y, op, seeds, region)
    seconds_holdout = time.perf_counter() - started
    rows = np.arange(truth.shape[0])
    out: dict[str, dict[str, list[float]]] = {}
    for rule, steps in picks(plain.history, settings).items():
        out[rule] = {"psnr": curves["psnr"][steps, rows].tolist(), "lpips": curves["lpips"][steps, rows].tolist(), "step": steps.tolist()}
    oracle = curves["lpips"].argmin(axis=0)
    out["oracle"] = {"psnr": curves["psnr"][oracle, rows].tolist(), "lpips": curves["lpips"][oracle, rows].tolist(), "step": oracle.tolist()}
    held_psnr, held_lpips = region(held.images)
    out["holdout"] = {"psnr": held_psnr.tolist(), "lpips": held_lpips.tolist(), "step": list(held.best_step)}
    out["holdout-run-last"] = {"psnr": held_curves["psnr"][-1].tolist(), "lpips": held_curves["lpips"][-1].tolist()}
    # Rules over a target's runs: one pick per target.
    R = args.runs
    final = last["images"].reshape(len(targets), R, *last["images"].shape[1:])  # [targets, R, 3, H, W]
    total = plain.history["total"][-1].reshape(len(targets), R)
    mean = final.mean(dim=1, keepdim=True)
    agreement = agreement_scores(last["images"], missing, R).reshape(len(targets), R)  # the rule `run` ships
    group = {"runs: lowest J": total.argmin(axis=1), "runs: medoid": agreement.argmin(dim=1).numpy()}
    last_psnr, last_lpips = curves["psnr"][-1].reshape(len(targets), R), curves["lpips"][-1].reshape(len(targets), R)
    for rule, chosen in group.items():
        idx = np.arange(len(targets))
        out[rule] = {"psnr": last_psnr[idx, chosen].tolist(), "lpips": last_lpips[idx, chosen].tolist()}
    mean_region = Region(truth[::R], missing, alex)
    m_psnr, m_lpips = mean_region(mean[:, 0])
    out["runs: mean image"] = {"psnr": m_psnr.tolist(), "lpips": m_lpips.tolist()}
    monitor = held.timings["seconds"].get("monitor", 0.0)
    return {"generator": name, "task": task, "rows": len(rows), "targets": args.targets, "runs": args.runs, "steps": args.steps,
            "candidates": args.candidates, "rules": out,
            "seconds": {"none": seconds_none, "holdout": seconds_holdout, "holdout_monitor_per_step": monitor / (args.steps + 1)}}


ORDER = ("oracle", "last", "holdout", "holdout-run-last", "min-J", "min-data",
         *(f"plateau-{w}-{e:g}" for w, e in PLATEAUS), "runs: lowest J", "runs: medoid", "runs: mean image")


def table(cells: list[dict]) -> list[str]:
    """Per rule and cell, "PSNR / LPIPS" means; then the difference to the last iterate over the
    cells: mean ± its standard error (cells as the samples), and the cells where the rule is better."""
    head = ("| rule | " + " | ".join(f"{c['generator']} {c['task']}" for c in cells)
            + " | ΔPSNR vs last (dB) | ΔLPIPS vs last | cells better (PSNR, LPIPS) |")
    lines = [head, "|---|" + "---:|" * (len(cells) + 3)]
    for rule in ORDER:
        entries, dp, dl = [], [], []
        for c in cells:
            r, base = c["rules"][rule], c["rules"]["last"]
            entries.append(f"{np.mean(r['psnr']):.2f} / {np.mean(r['lpips']):.4f}")
            dp.append(np.mean(r["psnr"]) - np.mean(base["psnr"]))
            dl.append(np.mean(r["lpips"]) - np.mean(base["lpips"]))
        se = lambda d: np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0  # noqa: E731
        lines.append(f"| {rule} | " + " | ".join(entries) + f" | {np.mean(dp):+.2f} ± {se(dp):.2f} | {np.mean(dl):+.4f} ± {se(dl):.4f} "
                     f"| {sum(d > 0 for d in dp)}, {sum(d < 0 for d in dl)} of {len(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", default="tiny32,ffhqlike64")
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/stopping"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vgg, alex = VGG16Features.random(0, resolution=64), LpipsAlex.random(0)
    json_path = args.out.with_suffix(".json")
    cells = json.loads(json_path.read_text()) if json_path.is_file() else []  # resumable: finished cells are kept
    done = {(c["generator"], c["task"]) for c in cells}
    for name in args.generators.split(","):
        for task in TASKS[name]:
            if (name, task) in done:
                continue
            cell = measure(name, task, args, vgg, alex)
            cells.append(cell)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(cells))
            print(name, task, {r: round(float(np.mean(v["psnr"])), 2) for r, v in cell["rules"].items()}, cell["seconds"], flush=True)
    lines = [
        "# Keeping an iterate without ground truth",
        "",
        f"- date: {datetime.date.today()}; machine: {machine_description(torch.device('cpu'))} ({os.cpu_count()} CPUs), "
        f"{platform.machine()}, load average at the end {os.getloadavg()[0]:.1f}",
        *(f"- command: `nice python bench/bench_stopping.py --generators {name} --targets {c['targets']} --runs {c['runs']} "
          f"--steps {c['steps']} --candidates {c['candidates']}`" for name, c in {c["generator"]: c for c in cells}.items()),
        "- setup: L-BRGM authors preset, in-range targets × runs (seeds 0…runs − 1) per generator as in its command, "
        "φ random VGG16 at 64 px, LPIPS(alex) with a random AlexNet; "
        "missing region = the mask's hole (super-resolution: the whole image)",
        "",
        "Cells: missing-region PSNR (dB) / LPIPS(alex), mean over targets × runs (run rules: over targets).",
        "",
        *table(cells),
        "",
        "Holdout's score per step (one operator pass and a masked MSE, inside the loop's 'monitor' phase), seconds: "
        + ", ".join(f"{c['generator']} {c['task']} {c['seconds']['holdout_monitor_per_step'] * 1e3:.2f} ms" for c in cells),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
