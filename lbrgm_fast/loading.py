"""Loading what a reconstruction needs in one call: the generator, φ and the LPIPS monitor.

`load_models` reads them from a generator checkpoint (any supported format, with torchvision's
VGG16 / AlexNet weights found by `weights.resolve_weights`) or from an engine plan (which holds
all three, and the exported graphs the forward-only phases can run on). It is what
`Reconstructor.from_checkpoint` and the `run` command call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.model import Generator
from lbrgm_fast.notes import NoteReporter, SilentNotes
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.runtime.engines import ForwardEngine, TorchEngine

#: Whether to load the LPIPS(alex) monitor: "required" (fail without its weights), "optional"
#: (a note instead), "none".
MonitorNeed = Literal["required", "optional", "none"]


@dataclass
class Models:
    """What a run needs loaded once: the generator, φ and (optionally) the LPIPS monitor."""

    generator: Generator
    perceptual: VGG16Features | None
    monitor: LpipsAlex | None
    source: dict  # what was loaded, for report.json: the file and its SHA-256
    notes: list[str] = field(default_factory=list)
    engine: ForwardEngine | None = None  # forward-only phases; None: the torch modules
    engine_report: dict = field(default_factory=dict)


def load_models(
    source: str | Path,
    device: torch.device | str = "cpu",
    *,
    kind: Literal["auto", "checkpoint", "plan"] = "auto",
    vgg16: str | Path | None = None,
    alexnet: str | Path | None = None,
    monitor: MonitorNeed = "optional",
    forward_backend: str = "auto",
    reporter: NoteReporter | None = None,
) -> Models:
    """The generator (frozen, eval mode), φ and the monitor on `device`.

    Args:
        source: A generator checkpoint or an engine plan (`lbrgm-fast build`).
        device: Where the networks go.
        kind: What `source` is; "auto" tells a plan by its content.
        vgg16, alexnet: torchvision weight files (checkpoints only; default: the torch hub
            cache, downloaded when missing and online).
        monitor: Load the LPIPS(alex) monitor (`MonitorNeed`).
        forward_backend: Plans: "auto" (measure and pick per phase), "torch", "onnxruntime"
            or "tensorrt". Checkpoints have only "torch" ("auto" means it).
        reporter: Receives notes (the backend choice, a missing monitor).

    Raises:
        UserError: an unreadable or unsupported file, missing weights, a backend that needs a plan.
    """
    from lbrgm_fast.plan import is_plan_file

    reporter = reporter or SilentNotes()
    device = torch.device(device)
    if kind == "plan" or (kind == "auto" and is_plan_file(source)):
        return _from_plan(source, device, monitor != "none", forward_backend, reporter)
    if forward_backend not in ("auto", "torch"):
        raise UserError(f"--forward-backend {forward_backend} runs exported graphs: build a plan with `lbrgm-fast build` and pass --engine PLAN")
    return _from_checkpoint(source, device, vgg16, alexnet, monitor)


def _from_plan(path: str | Path, device: torch.device, with_monitor: bool, forward_backend: str, reporter: NoteReporter) -> Models:
    from lbrgm_fast.plan import describe_weights, read_plan
    from lbrgm_fast.runtime.select import select_engine

    plan = read_plan(path)
    generator = plan.generator().to(device)
    perceptual = plan.perceptual().to(device)
    monitor = plan.monitor() if with_monitor else None
    monitor = None if monitor is None else monitor.to(device)
    source = {"engine": str(path), "source_sha256": plan.manifest["source_sha256"]}
    notes = [f"the plan's {name} weights are {describe_weights(plan.manifest[name])}" for name in ("perceptual", "monitor")
             if plan.manifest[name] is not None and plan.manifest[name]["weights"] == "unofficial"]
    selection = select_engine(
        plan, forward_backend, device, reporter, torch_engine=TorchEngine(generator, perceptual, monitor), lpips=monitor is not None,
    )
    return Models(generator, perceptual, monitor, source, [*notes, selection.reason], selection.engine, selection.describe())


def _from_checkpoint(path: str | Path, device: torch.device, vgg16: str | Path | None, alexnet: str | Path | None, monitor_need: MonitorNeed) -> Models:
    from lbrgm_fast.checkpoints import read_checkpoint
    from lbrgm_fast.weights import load_backbone

    notes: list[str] = []
    ckpt = read_checkpoint(path)
    generator = Generator.from_state_dict(ckpt.config, ckpt.state_dict)
    source = {"checkpoint": str(path), "checkpoint_sha256": ckpt.sha256, "checkpoint_format": ckpt.format}
    if not ckpt.has_w_avg:
        notes.append("the checkpoint has no w_avg; it was estimated from 10,000 mapping samples")

    def backbone(kind: Literal["vgg16", "alexnet"], path: str | Path | None) -> dict[str, torch.Tensor]:
        """The torchvision weights of `kind`; whether they are the official file goes to source and notes."""
        loaded = load_backbone(kind, path)
        source[f"{kind}_sha256"], source[f"{kind}_official"] = loaded.sha256, loaded.official
        notes.extend([] if loaded.note is None else [loaded.note])
        return loaded.state_dict

    perceptual = VGG16Features.from_torchvision_state_dict(backbone("vgg16", vgg16))
    monitor = None
    if monitor_need != "none":
        try:
            monitor = LpipsAlex.from_torchvision_state_dict(backbone("alexnet", alexnet))
        except UserError as exc:
            if monitor_need == "required":
                raise
            notes.append(f"no LPIPS(alex) monitor ({exc}); early stopping by the lowest objective J instead")
    return Models(generator.to(device), perceptual.to(device), None if monitor is None else monitor.to(device), source, notes)
