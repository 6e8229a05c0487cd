"""One optimisation step of the reconstruction loop, built once per run.

A step evaluates the objective at the current iterate, back-propagates and lets Adam update
the latents, returning what the loop needs to log and to keep the best iterate: the loss terms
and images *of the iterate before the update*, and a copy of that iterate. Nothing in a step
reads a value back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class StepOptions:
    """How the step runs. The defaults reproduce the research code (eager float32).

    Attributes:
        compile: Compile the whole step (forward, backward, Adam update) with torch.compile.
        precision: "fp32", or autocast "bf16"/"fp16" for the networks (loss reductions,
            normalisations and the Adam state stay float32).
        cuda_graphs: Replay the compiled step as a CUDA graph (CUDA only).
    """

    compile: bool = False
    precision: Precision = "fp32"
    cuda_graphs: bool = False


class StepObjective(Protocol):
    def __call__(self, w_plus: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]: ...


def make_eager_step(
    objective: StepObjective,
    optimizer: torch.optim.Optimizer,
    w_plus: torch.Tensor,
    z: torch.Tensor | None,
) -> Callable[[], StepOutput]:
    """The reference step in eager float32: returns (terms [T, B], images, w+ before, z before)."""

    def step() -> StepOutput:
        w_before = w_plus.detach().clone()
        z_before = None if z is None else z.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        terms, images = objective(w_plus, z)
        terms[0].sum().backward()
        optimizer.step()
        return terms.detach(), images.detach(), w_before, z_before

    return step


def make_step(
    objective: StepObjective,
    optimizer: torch.optim.Optimizer,
    w_plus: torch.Tensor,
    z: torch.Tensor | None,
    options: StepOptions = StepOptions(),
) -> Callable[[], StepOutput]:
    """The step for `options` (only the eager float32 step exists so far)."""
    if options != StepOptions():
        raise NotImplementedError(f"step options {options} are not implemented yet")
    return make_eager_step(objective, optimizer, w_plus, z)
