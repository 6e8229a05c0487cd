"""`lbrgm-fast eval`: the papers' tables (REFERENCE §8) on the user's own generator.

Every image × task × method is one *cell*: the clean image is degraded by the task's operator,
restored by the method with the oracle early stopping of the papers (best LPIPS(alex) against
the ground truth, scored every step), and measured (metrics.py). A finished cell is stored as
`cells/<task>/<method>/<image>.json` (+ the restored PNG), atomically, and never recomputed:
an interrupted eval continues where it stopped. From all cells come

* `results.csv`: one row per cell: every metric, the kept step, seconds per image;
* `summary.json` / `summary.md`: per task and method, on the images every method finished,
  the number of images on which the method is best by each metric (ties count for each tied
  method) and each metric's mean ± standard deviation;
* `figure-<task>.png`: ground truth | observation | one column per method, labelled, each
  restoration captioned with its LPIPS(alex) and PSNR;
* `time_to_quality.json` / `time-to-quality-<task>.png`: per task and method, the mean over
  images of the oracle's LPIPS(alex) so far (the best of the iterates logged up to a step)
  against the step and against the seconds per image, so a user sees how many steps a task
  needs.

Tasks are written `inpaint:<mask preset>` or `superres:<factor>`; methods `lbrgm`, `brgm`,
`none`, or `method:preset` for another of the method's presets (methods.py), e.g.
`brgm:lbrgm-paper`, the BRGM the L-BRGM paper's tables compare against.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lbrgm_fast.errors import UserError
from lbrgm_fast.io import atomic_write, find_inputs, load_image, save_image, unique_names, write_json
from lbrgm_fast.methods import METHODS, parse_method
from lbrgm_fast.metrics import HIGHER_IS_BETTER, METRICS, ImageMetrics
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Inpainting, Operator, SuperResolution
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.plots import labelled_grid, line_chart
from lbrgm_fast.reconstruct import ReconstructionResult, Reconstructor
from lbrgm_fast.runtime.engines import ForwardEngine
from lbrgm_fast.runtime.step import StepOptions


@dataclass(frozen=True)
class Protocol:
    """A table of the papers: its tasks and methods, and the generator resolution it is for (None: any)."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    resolution: int | None


PROTOCOLS: dict[str, Protocol] = {
    # The papers' tables compare L-BRGM (as its authors ran it) with their copy of BRGM
    # (REFERENCE §2, §8): hence brgm:lbrgm-paper, not BRGM's own, better-tuned default.
    # Table 2: half mask, eye-patch mask, super-resolution 32 -> 1024 and 64 -> 1024; LPIPS(alex).
    "paper1024": Protocol(("inpaint:right-half", "inpaint:eyes", "superres:32", "superres:16"), ("lbrgm", "brgm:lbrgm-paper"), 1024),
    # Table 1: half mask, super-resolution 64 -> 256; LPIPS(alex) and SSIM.
    "paper256": Protocol(("inpaint:right-half", "superres:4"), ("lbrgm", "brgm:lbrgm-paper"), 256),
    "quick": Protocol(("inpaint:right-half", "inpaint:eyes", "superres:4"), ("lbrgm", "brgm", "none"), None),
}
#: Added to --seed for the in-range ground truths' z, so that they are not the candidates' draws.
IN_RANGE_SEED_OFFSET = 2_000_003
#: Images per task figure (the first ones every method finished).
FIGURE_ROWS = 8
#: A method "has converged" at the first logged step whose mean LPIPS(alex) so far is within
#: this fraction of its final value (summary.md's time-to-quality table).
CONVERGED_WITHIN = 0.02
CSV_FIELDS = ("image", "task", "method", "status", "best_step", "seconds", *METRICS, *(f"hole_{m}" for m in METRICS), "message")


@dataclass
class Target:
    """A clean image to degrade and restore: its name and [3, H, W] in [0, 1]."""

    name: str
    image: torch.Tensor


def task_operator(task: str, resolution: int) -> Operator:
    """The operator of `task` ("inpaint:<preset>" or "superres:<factor>") at `resolution`."""
    kind, _, arg = task.partition(":")
    if kind == "inpaint":
        return Inpainting.from_preset(arg, resolution)
    if kind == "superres" and arg.isdigit():
        op = SuperResolution(int(arg))
        op.observation_size(resolution)  # a factor the resolution cannot take is a UserError
        return op
    raise UserError(f"unknown task {task!r}; write inpaint:<mask preset> or superres:<factor>, e.g. inpaint:eyes,superres:16")


def resolve_grid(protocol: str, tasks: Sequence[str] | None, methods: Sequence[str] | None, resolution: int) -> tuple[list[str], list[str]]:
    """The tasks and methods to run: the protocol's unless given; UserError for unknown names
    or a paper protocol on a generator of another resolution."""
    p = protocol_named(protocol)
    if p.resolution is not None and p.resolution != resolution:
        raise UserError(f"protocol {protocol} is for {p.resolution} px generators; this one makes {resolution} px images (use --protocol quick or --tasks)")
    tasks, methods = list(tasks or p.tasks), check_methods(methods or p.methods)
    for task in tasks:
        task_operator(task, resolution)
    if not tasks:
        raise UserError("give at least one task")
    return tasks, methods


def protocol_named(name: str) -> Protocol:
    """The protocol `name` (UserError for an unknown one); needs no model, like `check_methods`."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def check_methods(methods: Sequence[str]) -> list[str]:
    """`methods` ("name" or "name:preset"), checked (UserError for none or an unknown name);
    it needs no model, so the CLI calls it before loading any."""
    if not methods:
        raise UserError(f"give at least one method: {', '.join(METHODS)} (or method:preset)")
    for method in methods:
        parse_method(method)
    return list(methods)


def in_range_targets(generator: Generator, count: int, seed: int) -> list[Target]:
    """`count` images the generator itself makes, G(M(z)) for z drawn with `seed` +
    `IN_RANGE_SEED_OFFSET`: targets it can reproduce exactly (an in-range benchmark), drawn
    apart from the candidates of the same seed (otherwise a start would be a ground truth)."""
    if count < 1:
        raise UserError(f"--in-range must be >= 1, got {count}")
    z = torch.randn(count, generator.z_dim, generator=torch.Generator().manual_seed(seed + IN_RANGE_SEED_OFFSET))
    device = next(generator.parameters()).device
    with torch.no_grad():
        images = torch.cat([((generator(chunk.to(device)) + 1) / 2).clamp(0, 1).cpu() for chunk in z.split(8)])
    return [Target(f"in-range-{i:04d}", image) for i, image in enumerate(images)]


def folder_targets(folder: Path, resolution: int) -> tuple[list[Target], list[tuple[str, str]]]:
    """The images in `folder` (sorted), centre-cropped and resized to `resolution`, and the
    (name, message) of each one that could not be read."""
    if not folder.is_dir():
        raise UserError(f"--images {folder}: not a folder")
    paths, problems = find_inputs([str(folder)])
    if problems:
        raise UserError(f"--images {folder}: {problems[0][1]}")
    targets, failed = [], []
    for path, name in zip(paths, unique_names(paths)):  # a.png and a.jpg get cells of their own
        try:
            targets.append(Target(name, load_image(path, resolution)[0]))
        except UserError as exc:
            failed.append((name, str(exc)))
    return targets, failed


def _weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of a network's weights and buffers (which generator made the cells)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_settings(out: Path, settings: dict) -> None:
    """Record the settings the cells in `out` are made with (eval.json), or refuse to add cells
    made otherwise: a finished cell is reused as it is, so mixed settings would mix results."""
    path = out / "eval.json"
    out.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            raise UserError(f"{out} holds cells made with other settings ({', '.join(changed)}); "
                            "give another --out, or remove it to start again")
        return
    write_json(path, settings)


def _cell_path(out: Path, task: str, method: str, image: str, suffix: str) -> Path:
    return out / "cells" / task.replace(":", "-") / method.replace(":", "-") / f"{image}{suffix}"


def failed_row(image: str, task: str, method: str, message: str) -> dict:
    """The results row of a cell that failed (an unreadable image, a user error while restoring)."""
    return {"image": image, "task": task, "method": method, "status": "failed", "message": message}


def _observation_view(observation: torch.Tensor, resolution: int) -> torch.Tensor:
    """An observation [3, h, w] shown at the ground truth's size (nearest), for figures."""
    return F.interpolate(observation[None], size=(resolution, resolution), mode="nearest")[0]


def evaluate(
    generator: Generator,
    perceptual: VGG16Features,
    monitor: LpipsAlex,
    targets: Sequence[Target],
    tasks: Sequence[str],
    methods: Sequence[str],
    out: Path,
    *,
    steps: int = 2000,
    candidates: int = 100,
    seed: int = 0,
    batch_size: int = 1,
    step_options: StepOptions | None = None,
    engine: ForwardEngine | None = None,
    on_note: Callable[[str], None] = lambda message: None,
) -> list[dict]:
    """Restore and measure every target × task × method not already in `out`; returns one plain
    dict per cell (`CSV_FIELDS`; status "done" or "failed" with a message), done ones included.

    Args:
        generator, perceptual, monitor: The networks (`loading.load_models`); the monitor is
            the oracle's LPIPS(alex) and the metric's.
        targets: Clean images [3, R, R] in [0, 1], R the generator's resolution.
        tasks, methods: As `resolve_grid` returns them (methods "name" or "name:preset").
        out: Where cells, results and figures go (made if missing).
        steps, candidates, seed, batch_size: As `lbrgm-fast run` (seed: every image's).
        step_options: How the step runs (default eager float32).
        engine: Runs the forward-only phases (a plan's selected backends, `loading.load_models`);
            default the torch modules.
        on_note: Receives one line per failed cell and per method started.
    """
    resolution = generator.img_resolution
    _check_settings(out, {
        "generator_sha256": _weights_sha256(generator), "steps": steps, "candidates": candidates, "seed": seed,
        "step": dataclasses.asdict(step_options or StepOptions()),
    })
    metrics = ImageMetrics(monitor, perceptual, resolution)
    rows: list[dict] = []
    for task in tasks:
        operator = task_operator(task, resolution)
        observed = operator.observed()
        missing = None if observed is None else 1 - observed
        for method in methods:
            name, preset = parse_method(method)
            rec = Reconstructor(generator, perceptual, method=name, preset=preset, steps=steps, candidates=candidates,
                                monitor=monitor, early_stop="oracle", step_options=step_options, engine=engine)
            todo = []
            for t in targets:
                cached = _cell_path(out, task, method, t.name, ".json")
                if cached.is_file():
                    rows.append(json.loads(cached.read_text()))
                else:
                    todo.append(t)
            if todo:
                on_note(f"{task} {method}: {len(todo)} image(s)")
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                try:
                    rows += _run_cells(rec, operator, missing, metrics, batch, task, method, seed, out)
                except UserError as exc:
                    for t in batch:
                        rows.append(failed_row(t.name, task, method, str(exc)))
                        on_note(f"failed: {t.name} {task} {method}: {exc}")
    return rows


def _run_cells(rec: Reconstructor, operator: Operator, missing: torch.Tensor | None, metrics: ImageMetrics,
               batch: Sequence[Target], task: str, method: str, seed: int, out: Path) -> list[dict]:
    """Restore one batch of targets and store each cell (JSON row + restored PNG), atomically."""
    truth = torch.stack([t.image for t in batch])
    with torch.no_grad():
        observation = operator(truth)
    started = time.perf_counter()
    result = rec.run(observation, operator, ground_truth=truth, seed=seed)
    seconds = (time.perf_counter() - started) / len(batch)
    scores = metrics(result.images.to(rec.device), truth.to(rec.device), missing)
    curves = _oracle_curves(result, rec.steps)
    rows = []
    for i, t in enumerate(batch):
        row = {"image": t.name, "task": task, "method": method, "status": "done", "best_step": result.best_step[i],
               "seconds": seconds, **{name: float(v[i]) for name, v in scores.items()}, "message": result.stopped[i] or "",
               "curve": curves[i]}
        save_image(_cell_path(out, task, method, t.name, ".png"), result.images[i])
        seen = _cell_path(out, task, "observation", t.name, ".png")
        if not seen.is_file():  # one per image and task, whichever method gets there first
            save_image(seen, _observation_view(observation[i], truth.shape[-1]))
        write_json(_cell_path(out, task, method, t.name, ".json"), row)  # last: its presence means "done"
        rows.append(row)
    return rows


def _oracle_curves(result: ReconstructionResult, steps: int) -> list[dict]:
    """Per image of a batch: {"step": [T], "seconds": [T], "lpips_alex": [T]}, the oracle's
    LPIPS(alex) so far (the best of the logged iterates up to each step; nan until a finite
    one) and the seconds per image spent by then.

    Seconds at step k: setup, candidates and compilation, then the rest of the loop's time in
    proportion to k (its steps take alike), all divided by the batch's images.
    """
    logged = result.history["step"].astype(np.float64)
    so_far = np.fmin.accumulate(result.history["score"].astype(np.float64), axis=0)  # [T, B]; fmin skips nan
    phase = result.timings["seconds"]
    assert isinstance(phase, dict)
    start = phase.get("setup", 0.0) + phase.get("candidates", 0.0) + phase.get("compile", 0.0)
    loop = phase.get("optimise", 0.0) - phase.get("compile", 0.0)
    seconds = (start + loop * logged / max(steps, 1)) / so_far.shape[1]
    return [{"step": logged.astype(int).tolist(), "seconds": seconds.round(4).tolist(),
             "lpips_alex": [None if not math.isfinite(v) else round(float(v), 6) for v in so_far[:, i]]}
            for i in range(so_far.shape[1])]


# ---------------------------------------------------------------------------------------------
# Summaries


def _comparable(rows: Sequence[dict]) -> dict[str, tuple[list[str], list[str], dict[tuple[str, str], dict]]]:
    """Per task (in order of appearance): its methods, the images every one of them finished,
    and the done rows by (image, method)."""
    done = [r for r in rows if r.get("status") == "done"]
    grid = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["task"] == task))
        table = {(r["image"], r["method"]): r for r in done if r["task"] == task}
        images = [i for i in dict.fromkeys(r["image"] for r in rows if r["task"] == task) if all((i, m) in table for m in methods)]
        grid[task] = (methods, images, table)
    return grid


def summarise(rows: Sequence[dict]) -> dict:
    """Per task and method: {"images", "wins": {metric: n}, "mean": {..}, "std": {..}}.

    Only images that every method of the task finished count, so that wins and means compare
    the same images. A method wins an image by a metric when its value is the best there
    (highest PSNR / SSIM, lowest otherwise); tied methods each win. std is the sample standard
    deviation (0 for one image). Metrics a task lacks (hole_* for super-resolution) are left out.
    """
    summary: dict = {}
    for task, (methods, images, table) in _comparable(rows).items():
        names = [n for n in CSV_FIELDS if n.removeprefix("hole_") in METRICS and images and table[images[0], methods[0]].get(n) is not None]
        summary[task] = {m: {"images": len(images), "wins": {}, "mean": {}, "std": {}} for m in methods}
        for name in names:
            values = np.array([[table[i, m][name] for m in methods] for i in images], dtype=np.float64)  # [images, methods]
            best = values.max(axis=1) if name.removeprefix("hole_") in HIGHER_IS_BETTER else values.min(axis=1)
            wins = (values == best[:, None]).sum(axis=0)
            for j, m in enumerate(methods):
                entry = summary[task][m]
                entry["wins"][name] = int(wins[j])
                entry["mean"][name] = float(values[:, j].mean())
                entry["std"][name] = float(values[:, j].std(ddof=1)) if len(images) > 1 else 0.0
    return summary


def _on_steps(curve: dict, steps: list[int]) -> dict | None:
    """`curve` on the logged `steps`: as it is, or, when it stopped early (every image of its
    batch went non-finite) and its steps begin `steps`, held at its last values (a "so far"
    curve stays flat after a stop, and no more time is spent); None for other steps."""
    n = len(curve["step"])
    if curve["step"] != steps[:n] or not n:
        return None
    pad = len(steps) - n
    return {"step": steps, "seconds": curve["seconds"] + curve["seconds"][-1:] * pad,
            "lpips_alex": curve["lpips_alex"] + curve["lpips_alex"][-1:] * pad}


def time_to_quality(rows: Sequence[dict]) -> dict:
    """Per task and method: {"images", "step": [T], "seconds": [T], "lpips_alex": [T],
    "converged_step", "converged_seconds"}: the means over the images every method finished
    (and whose curve has the task's logged steps, `_on_steps`) of their oracle curves
    (`_oracle_curves`), and the first logged step at which the mean is within
    `CONVERGED_WITHIN` of its final value (None where the final mean is not finite)."""
    result: dict = {}
    for task, (methods, images, table) in _comparable(rows).items():
        found = {m: [table[i, m]["curve"] for i in images if table[i, m].get("curve")] for m in methods}
        if not any(found.values()):
            continue
        steps = max((c["step"] for cs in found.values() for c in cs), key=len)
        result[task] = {}
        for method, curves in found.items():
            same = [c for c in (_on_steps(c, steps) for c in curves) if c is not None]
            if not same:
                continue
            lpips = np.array([[np.nan if v is None else v for v in c["lpips_alex"]] for c in same], dtype=np.float64)
            mean = np.nanmean(lpips, axis=0) if np.isfinite(lpips).any(axis=0).all() else np.full(len(steps), np.nan)
            seconds = np.mean([c["seconds"] for c in same], axis=0)
            within = np.flatnonzero(mean <= mean[-1] * (1 + CONVERGED_WITHIN)) if np.isfinite(mean[-1]) else np.array([], int)
            first = int(within[0]) if len(within) else None
            result[task][method] = {"images": len(same), "step": steps, "seconds": seconds.round(4).tolist(),
                                    "lpips_alex": [None if not math.isfinite(v) else round(float(v), 6) for v in mean],
                                    "converged_step": None if first is None else steps[first],
                                    "converged_seconds": None if first is None else round(float(seconds[first]), 4)}
    return result


def summary_markdown(summary: dict, curves: dict | None = None) -> str:
    """`summary` as one Markdown table per task: per method and metric, "wins · mean ± std";
    with `curves` (`time_to_quality`), a table of when each method's mean LPIPS(alex) settled."""
    lines = ["# lbrgm-fast eval", "", "Per task: wins (images on which the method is best) · mean ± std over the images every method finished.", ""]
    for task, methods in summary.items():
        names = list(next(iter(methods.values()))["mean"])
        lines += [f"## {task}", "", "| method | images | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for method, s in methods.items():
            cells = [f"{s['wins'][n]} · {s['mean'][n]:.4g} ± {s['std'][n]:.2g}" for n in names]
            lines.append(f"| {method} | {s['images']} | " + " | ".join(cells) + " |")
        lines.append("")
        if curves and task in curves:
            lines += [f"Time to quality (oracle LPIPS(alex) so far, mean; settled: within {CONVERGED_WITHIN:.0%} of its last value):", "",
                      "| method | at start | at 1/4 | at 1/2 | last | settled at step | seconds per image then |", "|---|---:|---:|---:|---:|---:|---:|"]
            for method, c in curves[task].items():
                values, n = c["lpips_alex"], len(c["step"])
                at = [values[0], values[(n - 1) // 4], values[(n - 1) // 2], values[-1]]
                cells = ["–" if v is None else f"{v:.4g}" for v in at]
                settled = ["–", "–"] if c["converged_step"] is None else [str(c["converged_step"]), f"{c['converged_seconds']:.3g}"]
                lines.append(f"| {method} | " + " | ".join([*cells, *settled]) + " |")
            lines.append("")
    return "\n".join(lines)


def write_results(rows: Sequence[dict], out: Path) -> tuple[dict, dict]:
    """results.csv, summary.json, time_to_quality.json and summary.md in `out`, atomically;
    returns the summary and the time-to-quality curves (`summarise`, `time_to_quality`)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", lambda f: f.write(text.getvalue().encode()))
    summary, curves = summarise(rows), time_to_quality(rows)
    write_json(out / "summary.json", summary)
    write_json(out / "time_to_quality.json", curves)
    atomic_write(out / "summary.md", lambda f: f.write(summary_markdown(summary, curves).encode()))
    return summary, curves


# ---------------------------------------------------------------------------------------------
# Figures


def write_figures(rows: Sequence[dict], targets: Sequence[Target], out: Path, curves: dict) -> list[Path]:
    """Per task: figure-<task>.png, ground truth | observation | each method (captioned with
    its LPIPS(alex) and PSNR) for the first `FIGURE_ROWS` images every method finished (read
    back from the stored cells); and time-to-quality-<task>.png, `time_to_quality`'s curves
    against steps and against seconds per image (`curves`: `time_to_quality(rows)`, as
    `write_results` returns it)."""
    truths = {t.name: t.image for t in targets}
    written = []
    for task, (methods, finished, table) in _comparable(rows).items():
        images = [n for n in truths if n in finished][:FIGURE_ROWS]
        if not images:
            continue
        panels = [[truths[n], *(load_image(_cell_path(out, task, m, n, ".png"))[0] for m in ("observation", *methods))] for n in images]
        captions = [["", "", *(f"{table[n, m]['lpips_alex']:.3f} {table[n, m]['psnr']:.1f}dB" for m in methods)] for n in images]
        figure = labelled_grid(panels, ["ground truth", "observation", *methods], captions)
        path = out / f"figure-{task.replace(':', '-')}.png"
        atomic_write(path, lambda f: figure.save(f, format="PNG"))
        written.append(path)
    for task, per_method in curves.items():
        lpips = {m: np.array([np.nan if v is None else v for v in c["lpips_alex"]]) for m, c in per_method.items()}
        by_step = line_chart({m: (np.array(c["step"]), lpips[m]) for m, c in per_method.items()}, "step", "LPIPS", f"{task}: oracle LPIPS(alex) so far, mean")
        by_time = line_chart({m: (np.array(c["seconds"]), lpips[m]) for m, c in per_method.items()}, "seconds per image", "LPIPS", "the same against time")
        chart = Image.new("RGB", (by_step.width + by_time.width, by_step.height), "white")
        chart.paste(by_step, (0, 0))
        chart.paste(by_time, (by_step.width, 0))
        path = out / f"time-to-quality-{task.replace(':', '-')}.png"
        atomic_write(path, lambda f: chart.save(f, format="PNG"))
        written.append(path)
    return written
