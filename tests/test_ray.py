"""Restoring on a Ray cluster (`run --ray`, `lbrgm_fast.ray`), on a 2-CPU cluster on localhost
that this module starts once. The workers load the tiny32 plan (random φ at 32 px) from disk,
as a cluster's workers would; runs are --deterministic, so a cluster run must equal a local one
bitwise whatever its workers' thread count."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from lbrgm_fast.cli import app  # noqa: E402
from lbrgm_fast.job import RunOptions, run_job  # noqa: E402
from lbrgm_fast.progress import JobProgress  # noqa: E402
from lbrgm_fast.ray import Restorer, SilentJobReporter, run_ray_job  # noqa: E402

from plans import tiny32_plan  # noqa: E402

pytestmark = pytest.mark.slow
IMAGES = 4


@pytest.fixture(scope="module")
def cluster() -> object:
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny32_plan(tmp_path_factory)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for k in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{k}.png")
    return folder


def options(plan: Path, inputs: Path, out: Path, **changes: object) -> RunOptions:
    base = dict(inputs=[str(inputs)], out=out, engine=str(plan), forward_backend="torch", mask_preset="mouth", steps=6, candidates=2,
                log_every=2, checkpoint_every=2, device="cpu", compile=False, deterministic=True)
    return RunOptions(**{**base, **changes})  # type: ignore[arg-type]


def latents(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "latents.npz") as data:
        return {k: data[k] for k in data.files}


def assert_same_results(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        x, y = latents(a / name), latents(b / name)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), name
        assert np.array_equal(np.asarray(Image.open(a / name / "restored.png")), np.asarray(Image.open(b / name / "restored.png"))), name
        assert not (b / name / "state.pt").exists()


NAMES = [f"img{k}" for k in range(IMAGES)]


@pytest.fixture(scope="module")
def local_run(plan: Path, inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same job run locally, 40 steps (long enough to kill a worker mid-batch)."""
    out = tmp_path_factory.mktemp("local")
    run_job(options(plan, inputs, out, steps=40))
    return out


def test_cluster_run_equals_local_run(cluster: object, plan: Path, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["run", str(inputs), "--engine", str(plan), "--forward-backend", "torch", "--mask-preset", "mouth", "--steps", "40",
            "--candidates", "2", "--log-every", "2", "--device", "cpu", "--no-compile", "--deterministic",
            "--no-retain-host-memory", "--out", str(tmp_path), "--ray", "local", "--workers", "2", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [o["name"] for o in summary] == NAMES and all(o["status"] == "done" for o in summary)
    assert_same_results(local_run, tmp_path, NAMES)
    report = json.loads((tmp_path / "img0" / "report.json").read_text())
    local = json.loads((local_run / "img0" / "report.json").read_text())
    assert report["options"]["deterministic"] and report["history"] == local["history"]
    # A second run finds every result and recomputes none.
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and all(o["status"] == "skipped" for o in json.loads(again.stdout))


class KillWorkerMidBatch(SilentJobReporter):
    """Kills (SIGKILL) the first worker seen restoring an input that has saved a state."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.killed: list[str] = []
        self.finished_before: dict[str, int] = {}  # report.json mtimes of the inputs done by then

    def update(self, progress: JobProgress) -> None:
        if self.killed:
            return
        for worker in progress.workers:
            if worker.pid and worker.running and all((self.out / name / "state.pt").exists() for name in worker.running):
                self.finished_before = {p.parent.name: p.stat().st_mtime_ns for p in self.out.glob("*/report.json")}
                os.kill(worker.pid, signal.SIGKILL)
                self.killed = list(worker.running)
                return


def test_killed_worker_batch_is_retried_and_resumed(cluster: object, plan: Path, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    reporter = KillWorkerMidBatch(tmp_path)
    outcomes = run_ray_job(options(plan, inputs, tmp_path, steps=40), "local", workers=2, reporter=reporter)
    assert reporter.killed, "no worker was seen mid-batch"
    assert [(o.name, o.status) for o in outcomes] == [(name, "done") for name in NAMES], [o.message for o in outcomes]
    # The killed batch continued from its saved state to the result an unbroken run gives,
    # and inputs finished before the kill were not written again.
    assert_same_results(local_run, tmp_path, NAMES)
    for name, mtime in reporter.finished_before.items():
        assert (tmp_path / name / "report.json").stat().st_mtime_ns == mtime, name


class InterruptAfter(SilentJobReporter):
    """Ctrl-C once `done` inputs are finished."""

    def __init__(self, done: int) -> None:
        self.done = done

    def update(self, progress: JobProgress) -> None:
        if progress.done >= self.done:
            raise KeyboardInterrupt


def test_interrupted_cluster_job_resumes_without_recomputing(cluster: object, plan: Path, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_ray_job(options(plan, inputs, tmp_path, steps=40), "local", workers=1, reporter=InterruptAfter(1))
    finished = {p.parent.name: p.read_bytes() for p in tmp_path.glob("*/report.json")}
    assert 1 <= len(finished) < IMAGES
    outcomes = run_ray_job(options(plan, inputs, tmp_path, steps=40, resume=True), "local", workers=2)
    status = {o.name: o.status for o in outcomes}
    assert status == {name: "skipped" if name in finished else "done" for name in NAMES}
    assert {name: (tmp_path / name / "report.json").read_bytes() for name in finished} == finished
    assert_same_results(local_run, tmp_path, NAMES)


def test_restorer_on_a_ray_dataset(cluster: object, plan: Path, inputs: Path, tmp_path: Path) -> None:
    images = [np.asarray(Image.open(inputs / f"{name}.png")) for name in NAMES[:3]]
    kwargs = dict(engine=str(plan), forward_backend="torch", mask_preset="mouth", degrade=True, steps=4, candidates=2, log_every=2,
                  device="cpu", compile=False, deterministic=True)
    dataset = ray.data.from_items([{"id": k, "image": image} for k, image in enumerate(images)])
    rows = dataset.map_batches(Restorer, fn_constructor_kwargs=kwargs, concurrency=1, num_cpus=1, batch_size=2).take_all()
    assert sorted(r["id"] for r in rows) == [0, 1, 2]
    # The same images restored by a local job (--degrade: observation made from the clean image).
    run_job(RunOptions(inputs=[str(inputs / f"{name}.png") for name in NAMES[:3]], out=tmp_path, batch_size=2, **kwargs))  # type: ignore[arg-type]
    for row in rows:
        name = NAMES[row["id"]]
        assert row["restored"].shape == (32, 32, 3) and row["restored"].dtype == np.uint8
        expected = np.asarray(Image.open(tmp_path / name / "restored.png"))
        assert np.array_equal(row["restored"], expected), name
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert row["best_step"] == report["metrics"]["best_step"]
        assert row["psnr"] == pytest.approx(report["metrics"]["psnr"], abs=1e-4)


def test_more_workers_than_the_cluster_holds_is_one_line(cluster: object, plan: Path, inputs: Path, tmp_path: Path) -> None:
    # Ray would wait for room that never comes: the job says so at once instead of hanging.
    from lbrgm_fast.errors import UserError

    with pytest.raises(UserError, match="room for 2 workers of 0 GPUs and 1 CPU, not 3"):
        run_ray_job(options(plan, inputs, tmp_path), "local", workers=3)
    assert not list(tmp_path.iterdir())
