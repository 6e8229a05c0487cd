"""The reconstruction state: one walk over its tensors serves `to`, `slice`, `stack`, and a saved
state reads back as it was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lbrgm_fast.methods import method_settings
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Inpainting
from lbrgm_fast.reconstruct import Reconstructor
from lbrgm_fast.state import ReconstructionState


def checkpointed_state(G: Generator) -> ReconstructionState:
    """The state a 2-row run hands `on_checkpoint` after 4 of 6 steps (Adam's state filled)."""
    op = Inpainting.from_preset("bar", G.img_resolution)
    with torch.no_grad():
        y = op(((G(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))) + 1) / 2).clamp(0, 1))
    settings = dataclasses.replace(method_settings("lbrgm"), perceptual_weight=0.0)
    rec = Reconstructor(G, None, settings=settings, steps=6, candidates=2, log_every=2, early_stop="holdout")
    saved: list[ReconstructionState] = []
    rec.run(y, op, seed=[1, 2], on_checkpoint=lambda state: saved.append(state.to("cpu")), checkpoint_every=4)
    return saved[0]


def assert_same(a: ReconstructionState, b: ReconstructionState) -> None:
    for f in dataclasses.fields(ReconstructionState):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "optimizer":
            assert x["param_groups"] == y["param_groups"] and x["state"].keys() == y["state"].keys()
            for k in x["state"]:
                assert x["state"][k].keys() == y["state"][k].keys()
                assert all(torch.equal(x["state"][k][n], y["state"][k][n]) for n in x["state"][k])
        elif f.name == "history":
            assert len(x) == len(y) and all(torch.equal(p, q) for p, q in zip(x, y))
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name


def test_slices_stack_back_into_the_state_and_files_read_back(tiny32: Generator, tmp_path: Path) -> None:
    state = checkpointed_state(tiny32)
    assert state.step == 4 and state.history_steps == [0, 2] and state.optimizer["state"]
    rows = [state.slice(slice(0, 1)), state.slice(slice(1, 2))]
    assert rows[1].w_plus.shape[0] == 1 and rows[1].history[0].shape == (8, 1)
    # Adam's step count is one scalar for all rows; its moments are per row.
    adam = rows[1].optimizer["state"][0]
    assert adam["step"].ndim == 0 and adam["exp_avg"].shape[0] == 1
    assert_same(ReconstructionState.stack(rows), state.to("cpu"))
    state.save(tmp_path / "state.pt")
    assert_same(ReconstructionState.load(tmp_path / "state.pt"), state.to("cpu"))


def test_the_kept_iterate_carries_its_own_objective_even_between_logs() -> None:
    # Rule "none" keeps the last live iterate, which with per-step tracking is often no logged
    # step (a row that diverges at step 3 keeps step 2 while logs are at 0 and 4); restarts
    # are then compared by J at that very iterate, not at the nearest log.
    w = torch.zeros(2, 1, 1)
    state = ReconstructionState.start(w, None)
    totals = {0: [5.0, 5.0], 1: [4.0, 6.0], 2: [3.0, 7.0], 3: [float("nan"), 8.0]}
    for step, total in totals.items():
        total = torch.tensor(total)
        state.alive = state.alive & torch.isfinite(total)
        state.keep_best(step, torch.zeros(2), total, w + step, None)  # score 0: ties go to the latest
    assert state.best_step.tolist() == [2, 3]
    assert state.best_total.tolist() == [3.0, 8.0]
    assert state.best_w_plus[:, 0, 0].tolist() == [2.0, 3.0]


def test_a_state_saved_before_best_total_existed_still_loads(tiny32: Generator, tmp_path: Path) -> None:
    state = checkpointed_state(tiny32)
    data = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "best_total"}
    torch.save(data, tmp_path / "old.pt")
    loaded = ReconstructionState.load(tmp_path / "old.pt")
    assert torch.equal(loaded.best_total, torch.full((2,), float("inf")))
    assert torch.equal(loaded.best_w_plus, state.best_w_plus)
