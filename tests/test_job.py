"""The job runner: resuming an interrupted run, and keeping results safe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbrgm_fast import job
from lbrgm_fast.job import Models, RunOptions, SilentReporter, run_job
from lbrgm_fast.perceptual import VGG16Features

from reference import nvidia_generator


class InterruptAt(SilentReporter):
    """Simulates Ctrl-C once the loop reports `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def progress(self, progress) -> None:  # noqa: ANN001
        if progress.step >= self.step:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def models() -> Models:
    return Models(nvidia_generator("tiny32"), VGG16Features.random(0, resolution=16), None, source={"generator": "tiny32 fixture"})


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "in" / "img.png"
    path.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def options(image: Path, out: Path, **changes: object) -> RunOptions:
    base = dict(inputs=[str(image)], out=out, mask_preset="mouth", steps=8, candidates=3, log_every=2, device="cpu", checkpoint_every=2, compile=False)
    return RunOptions(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "default"])
@pytest.mark.parametrize("restarts", [1, 2])
def test_interrupted_run_resumes_to_the_same_result(models: Models, image: Path, tmp_path: Path, restarts: int, deterministic: bool) -> None:
    # Under the deterministic promise the resumed run must equal the uninterrupted one bitwise;
    # under the default one, up to its rounding bound (README, docs/reproducibility.md: w+ and
    # images within 1e-2; tests/test_reproducibility.py bounds it within one process).
    (reference,) = run_job(options(image, tmp_path / "ref", restarts=restarts, deterministic=deterministic), models=models)
    with pytest.raises(KeyboardInterrupt):
        run_job(options(image, tmp_path / "run", restarts=restarts, deterministic=deterministic), InterruptAt(5), models=models)
    folder = tmp_path / "run" / "img"
    assert (folder / "state.pt").is_file() and not (folder / "report.json").exists()
    (refused,) = run_job(options(image, tmp_path / "run", restarts=restarts), models=models)
    assert refused.status == "skipped" and "--resume" in refused.message
    (mismatch,) = run_job(options(image, tmp_path / "run", resume=True, restarts=restarts + 1), models=models)
    assert mismatch.status == "failed" and f"interrupted with {restarts} restarts or samples" in mismatch.message
    (resumed,) = run_job(options(image, tmp_path / "run", resume=True, restarts=restarts, deterministic=deterministic), models=models)
    assert resumed.status == "done" and not (folder / "state.pt").exists()
    a, b = np.load(tmp_path / "ref" / "img" / "latents.npz"), np.load(folder / "latents.npz")
    assert int(a["step"]) == int(b["step"])
    report = json.loads((folder / "report.json").read_text())
    assert report["reproducibility"]["deterministic"] is deterministic
    if deterministic:
        assert np.array_equal(a["w_plus"], b["w_plus"]) and np.array_equal(a["z"], b["z"])
        assert reference.metrics["best_step"] == resumed.metrics["best_step"]
        assert report["reproducibility"]["threads"] == 1
    else:
        assert np.abs(a["w_plus"] - b["w_plus"]).max() <= 1e-2 and np.abs(a["z"] - b["z"]).max() <= 1e-2
    kept = report["restarts"]
    assert kept["count"] == restarts and len(kept["scores"]) == restarts
    assert kept["kept"] == int(np.argmin(kept["scores"])) == resumed.metrics.get("restart", 0)


def test_keeping_host_memory_changes_nothing_but_speed(models: Models, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entered: list[bool] = []
    real = job.retained_host_memory

    def recording(enabled: bool = True):
        entered.append(enabled)
        return real(enabled)

    monkeypatch.setattr(job, "retained_host_memory", recording)
    run_job(options(image, tmp_path / "system", steps=4), models=models)
    run_job(options(image, tmp_path / "kept", steps=4, retain_host_memory=True), models=models)
    assert entered == [False, True]  # the library leaves the allocator alone unless asked
    system, kept = (np.load(tmp_path / name / "img" / "latents.npz") for name in ("system", "kept"))
    assert np.array_equal(system["w_plus"], kept["w_plus"]) and np.array_equal(system["z"], kept["z"])


def test_existing_results_are_kept(models: Models, image: Path, tmp_path: Path) -> None:
    run_job(options(image, tmp_path, steps=2), models=models)
    report = tmp_path / "img" / "report.json"
    before = report.read_bytes()
    (again,) = run_job(options(image, tmp_path, steps=4), models=models)
    assert again.status == "skipped" and report.read_bytes() == before
    (forced,) = run_job(options(image, tmp_path, steps=4, overwrite=True), models=models)
    assert forced.status == "done" and report.read_bytes() != before


def test_batches_group_and_name_inputs(models: Models, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / sub / "x.png")
    outcomes = run_job(
        RunOptions(inputs=[str(tmp_path / "a"), str(tmp_path / "b")], out=tmp_path / "out", mask_preset="eyes", steps=2,
                   candidates=2, batch_size=2, device="cpu", compile=False),
        models=models,
    )
    assert [o.name for o in outcomes] == ["x", "b-x"] and all(o.status == "done" for o in outcomes)
    assert all((o.folder / "restored.png").is_file() for o in outcomes)


def test_report_files_are_strict_json(tmp_path: Path) -> None:
    from lbrgm_fast.io import write_json

    write_json(tmp_path / "r.json", {"loss": float("nan"), "scores": [1.5, float("inf")], "nested": {"x": -float("inf")}})

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {"loss": None, "scores": [1.5, None], "nested": {"x": None}}

