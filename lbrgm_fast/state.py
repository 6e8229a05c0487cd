"""The state of a reconstruction: the latents, Adam's state over them, the best iterate so far.

A batch's state has one row per optimised sample (row b·R + r for restart r of observation b).
Every tensor in it is per row — batch first, except the history, whose entries are
[terms + 1, B] — but for Adam's step counts, which are scalars shared by the rows (`_is_shared`).
`_combine` is the one walk over those tensors that `to`, `slice` and `stack` are written with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from lbrgm_fast.io import atomic_write
from lbrgm_fast.objective import TERM_NAMES

#: The row of the early-stopping score in each history entry, after the loss terms.
SCORE = len(TERM_NAMES)
#: The state's tensors with one row per sample along their first dimension (z and best_z may be None).
_BATCH_FIRST = ("w_plus", "z", "best_w_plus", "best_z", "best_score", "best_total", "best_step", "alive")

RowMap = Callable[[list[torch.Tensor], int], torch.Tensor]


@dataclass
class ReconstructionState:
    """Everything needed to continue an interrupted run.

    The loop hands it to `on_checkpoint` with its tensors on the run's device: copies, which
    the loop does not change afterwards, while the object itself goes on with the run (its
    step, its history); `to(device)` or `save` keeps it as it was.

    Attributes:
        step: The next step to run.
        w_plus, z: The iterate [B, num_ws, w_dim], [B, z_dim] (z None when not optimised).
        optimizer: Adam's state_dict over [w_plus] (+ [z]).
        best_w_plus, best_z: The kept iterate per row (the best scored so far).
        best_score: Its early-stopping score (B,), lower is better; inf before the first scored step.
        best_total: Its objective J (B,) (what the "none" rule compares restarts by); inf before.
        best_step: Its step (B,).
        alive: False for a row whose loss has become NaN or infinite (B,).
        history_steps: The logged steps.
        history: Per logged step, [len(TERM_NAMES) + 1, B]: the loss terms, then the score.
    """

    step: int
    w_plus: torch.Tensor
    z: torch.Tensor | None
    optimizer: dict
    best_w_plus: torch.Tensor
    best_z: torch.Tensor | None
    best_score: torch.Tensor
    best_total: torch.Tensor
    best_step: torch.Tensor
    alive: torch.Tensor
    history_steps: list[int] = field(default_factory=list)
    history: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def start(cls, w_plus: torch.Tensor, z: torch.Tensor | None) -> ReconstructionState:
        """Step 0 at the start latents: nothing logged, the start is the best so far."""
        batch, device = w_plus.shape[0], w_plus.device
        return cls(
            step=0, w_plus=w_plus.detach(), z=None if z is None else z.detach(), optimizer={},
            best_w_plus=w_plus.detach().clone(), best_z=None if z is None else z.detach().clone(),
            best_score=torch.full((batch,), math.inf, device=device),
            best_total=torch.full((batch,), math.inf, device=device),
            best_step=torch.zeros(batch, dtype=torch.long, device=device),
            alive=torch.ones(batch, dtype=torch.bool, device=device),
        )

    # -- the method's bookkeeping ----------------------------------------------------------------

    @torch.no_grad()
    def keep_best(self, step: int, score: torch.Tensor, total: torch.Tensor, w_plus: torch.Tensor, z: torch.Tensor | None) -> None:
        """Keep iterate `step` (score (B,), objective J `total` (B,)) in the rows where it scores
        at least as well as the kept one (ties go to the later iterate). Device ops only: no
        value is read back, so the loop can call it every step without waiting for the device."""
        better = self.alive & (score <= self.best_score)
        self.best_score = torch.where(better, score, self.best_score)
        self.best_total = torch.where(better, total.detach().float(), self.best_total)
        self.best_step = torch.where(better, torch.full_like(self.best_step, step), self.best_step)
        self.best_w_plus = torch.where(better[:, None, None], w_plus.detach(), self.best_w_plus)
        if z is not None and self.best_z is not None:
            self.best_z = torch.where(better[:, None], z.detach(), self.best_z)

    def log(self, step: int, terms: torch.Tensor, score: torch.Tensor) -> None:
        """Append iterate `step`'s loss terms [T, B] and score (B,) to the history."""
        self.history_steps.append(step)
        self.history.append(torch.cat([terms.detach(), score.detach()[None]]).float())

    def snapshot(self, w_plus: torch.Tensor, z: torch.Tensor | None, optimizer: torch.optim.Optimizer) -> None:
        """Take copies of the current latents and Adam's state (which the loop updates in place)."""
        self.w_plus, self.z = w_plus.detach().clone(), None if z is None else z.detach().clone()
        self.optimizer = copy.deepcopy(optimizer.state_dict())

    def history_arrays(self, scored: bool) -> dict[str, np.ndarray]:
        """"step" [T] and one [T, B] array per loss term (and "score" when `scored`)."""
        history = {"step": np.asarray(self.history_steps, dtype=np.int64)}
        if self.history:
            stacked = torch.stack(self.history).cpu().numpy()  # [T, terms + 1, B]
            for i, name in enumerate(TERM_NAMES):
                history[name] = stacked[:, i]
            if scored:
                history["score"] = stacked[:, SCORE]
        return history

    # -- moving, slicing, stacking, files --------------------------------------------------------

    def to(self, device: torch.device | str) -> ReconstructionState:
        """A copy with every tensor on `device`."""
        return self._combine([self], lambda ts, _dim: ts[0].to(device), lambda t: t.to(device))

    def slice(self, rows: slice) -> ReconstructionState:
        """Rows `rows` (e.g. one input's restarts) as a host copy."""
        return self._combine(
            [self],
            lambda ts, dim: ts[0][(slice(None),) * dim + (rows,)].detach().cpu().clone(),
            lambda t: t.detach().cpu().clone(),
        )

    @classmethod
    def stack(cls, parts: Sequence[ReconstructionState]) -> ReconstructionState:
        """The states of several batches at the same step as one (their rows in order)."""
        return cls._combine(parts, lambda ts, dim: torch.cat(ts, dim=dim), lambda t: t)

    def save(self, path: str | Path) -> None:
        """Write this state atomically (torch.save of a dict of tensors; `load` reads it back)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        atomic_write(Path(path), lambda handle: torch.save(data, handle))

    @classmethod
    def load(cls, path: str | Path) -> ReconstructionState:
        """A state written by `save`, on the CPU (tensors only: nothing in the file is executed).

        A state saved before `best_total` existed gets inf there: only the "none" rule's choice
        among restarts reads it."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        data.setdefault("best_total", torch.full_like(data["best_score"], math.inf))
        return cls(**data)

    @staticmethod
    def _is_shared(tensor: torch.Tensor) -> bool:
        """Adam's step count: one scalar for all rows (every other tensor is per row)."""
        return tensor.ndim == 0

    @classmethod
    def _combine(cls, parts: Sequence[ReconstructionState], rows: RowMap, shared: Callable[[torch.Tensor], torch.Tensor]) -> ReconstructionState:
        """A new state from the corresponding tensors of `parts`: `rows(tensors, batch_dim)` for
        per-row tensors, `shared(first part's)` for Adam's step counts. Scalars, steps and
        Adam's settings come from the first part."""
        first = parts[0]

        def per_row(name: str) -> Any:
            tensors = [getattr(p, name) for p in parts]
            return None if tensors[0] is None else rows(tensors, 0)

        def adam_entry(key: object, name: str, tensor: torch.Tensor) -> torch.Tensor:
            if cls._is_shared(tensor):
                return shared(tensor)
            return rows([p.optimizer["state"][key][name] for p in parts], 0)

        optimizer = {
            "state": {key: {name: adam_entry(key, name, t) for name, t in entry.items()}
                      for key, entry in first.optimizer.get("state", {}).items()},
            "param_groups": first.optimizer.get("param_groups", []),
        }
        history = [rows([p.history[t] for p in parts], 1) for t in range(len(first.history))]
        return cls(
            step=first.step, optimizer=optimizer, history_steps=list(first.history_steps), history=history,
            **{name: per_row(name) for name in _BATCH_FIRST},
        )
