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
from lbrgm_fast.errors import ImageError  # noqa: E402
from lbrgm_fast.job import RunOptions, run_job  # noqa: E402
from lbrgm_fast.progress import JobProgress  # noqa: E402
from lbrgm_fast.ray import Restorer, SilentJobReporter, cpus_per_worker, init_ray, run_ray_job  # noqa: E402

from plans import tiny32_plan  # noqa: E402

pytestmark = pytest.mark.slow
IMAGES = 4
#: Steps of the cluster runs: enough for a worker to be killed between its first saved state
#: (every 2 steps) and its result.
STEPS = 30


@pytest.fixture(scope="module")
def cluster() -> object:
    # From the repository root, a plain ray.init would put the bare lbrgm_fast/ folder on the
    # workers' sys.path (a non-editable install, as in CI, then fails to import kernels).
    init_ray(num_cpus=2, include_dashboard=False, configure_logging=False)
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


def test_cluster_options_fail_in_one_line_before_ray_starts(inputs: Path, tmp_path: Path) -> None:
    # Before any test starts the module's cluster: each of these is refused without starting
    # Ray, and an address nobody listens on is refused at once (Ray itself retries for minutes).
    assert not ray.is_initialized()
    runner = CliRunner()
    run = ["run", str(inputs), "--engine", "none.plan", "--mask-preset", "mouth", "--device", "cpu", "--out", str(tmp_path)]
    for extra, message in ((["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: no Ray cluster there"),
                           (["--ray", "head"], "--ray head: give local, auto, HOST:PORT or ray://HOST:PORT"),
                           (["--ray", "local", "--workers", "0"], "--workers must be >= 1, got 0"),
                           (["--ray", "local", "--gpus-per-worker", "1"], "--gpus-per-worker 1 with --device cpu: give 0 for CPU workers")):
        result = runner.invoke(app, run + extra)
        assert result.exit_code == 2 and f"error: {message}" in result.output, result.output
        assert not ray.is_initialized() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def local_run(plan: Path, inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same job run locally, `STEPS` steps."""
    out = tmp_path_factory.mktemp("local")
    run_job(options(plan, inputs, out, steps=STEPS))
    return out


def test_cluster_run_equals_local_run(cluster: object, plan: Path, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["run", str(inputs), "--engine", str(plan), "--forward-backend", "torch", "--mask-preset", "mouth", "--steps", str(STEPS),
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
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

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
    outcomes = run_ray_job(options(plan, inputs, tmp_path, steps=STEPS), "local", workers=2, reporter=reporter)
    assert reporter.killed, "no worker was seen mid-batch"
    assert "Ray: 2 worker(s) on 1 node(s), 1 CPU thread(s) each" in reporter.notes  # two workers share the 2 CPUs
    assert [(o.name, o.status) for o in outcomes] == [(name, "done") for name in NAMES], [o.message for o in outcomes]
    # The killed batch continued from its saved state to the result an unbroken run gives,
    # and inputs finished before the kill were not written again.
    assert_same_results(local_run, tmp_path, NAMES)
    for name, mtime in reporter.finished_before.items():
        assert (tmp_path / name / "report.json").stat().st_mtime_ns == mtime, name
    # The worker that resumed them said so, as a local --resume does.
    assert any(n.startswith("resuming ") and all(name in n for name in reporter.killed) for n in reporter.notes), reporter.notes


class InterruptAfter(SilentJobReporter):
    """Ctrl-C once `done` inputs are finished."""

    def __init__(self, done: int) -> None:
        self.done = done
        self.ended = False
        self.threads: list[int | None] = []

    def update(self, progress: JobProgress) -> None:
        self.threads = [w.threads for w in progress.workers]
        if progress.done >= self.done:
            raise KeyboardInterrupt

    def job_finished(self) -> None:
        self.ended = True


def test_interrupted_cluster_job_resumes_without_recomputing(cluster: object, plan: Path, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    interrupt = InterruptAfter(1)
    with pytest.raises(KeyboardInterrupt):
        run_ray_job(options(plan, inputs, tmp_path, steps=STEPS), "local", workers=1, reporter=interrupt)
    assert interrupt.ended  # the progress display is told, so it can stop
    assert interrupt.threads == [2]  # one CPU worker on the 2-CPU cluster holds both CPUs and uses them
    finished = {p.parent.name: p.read_bytes() for p in tmp_path.glob("*/report.json")}
    assert 1 <= len(finished) < IMAGES
    outcomes = run_ray_job(options(plan, inputs, tmp_path, steps=STEPS, resume=True), "local", workers=2)
    status = {o.name: o.status for o in outcomes}
    assert status == {name: "skipped" if name in finished else "done" for name in NAMES}
    assert {name: (tmp_path / name / "report.json").read_bytes() for name in finished} == finished
    assert_same_results(local_run, tmp_path, NAMES)


def test_cpu_workers_share_each_node_s_cpus() -> None:
    assert cpus_per_worker([2], 1) == 2 and cpus_per_worker([2], 2) == 1
    assert cpus_per_worker([8, 8], 1) == 8  # one worker lives on one node: not 16
    assert cpus_per_worker([8, 8], 3) == 4  # 4+4 on one node, 4 on the other (5 would fit only 2)
    assert cpus_per_worker([8, 8], 16) == 1
    assert cpus_per_worker([6, 2], 2) == 3  # 3+3 on the first node; 4 fits only one worker
    assert cpus_per_worker([1], 1) == 1


def test_restorer_on_a_ray_dataset(cluster: object, plan: Path, inputs: Path, tmp_path: Path) -> None:
    images = [np.asarray(Image.open(inputs / f"{name}.png")) for name in NAMES[:3]]
    kwargs = dict(engine=str(plan), forward_backend="torch", mask_preset="mouth", degrade=True, steps=4, candidates=2, log_every=2,
                  device="cpu", compile=False, deterministic=True)
    dataset = ray.data.from_items([{"id": k, "image": image} for k, image in enumerate(images)])
    rows = dataset.map_batches(Restorer, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=2).take_all()
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


def test_restorer_refuses_masks_it_cannot_use(plan: Path, inputs: Path) -> None:
    # Called in this process (no cluster needed): a mask of another size, or a mask column for a
    # task without masks, is one clear ImageError, not a broadcasting error or a silent no-op.
    kwargs = dict(engine=str(plan), forward_backend="torch", steps=1, candidates=2, device="cpu", compile=False)
    image = np.asarray(Image.open(inputs / "img0.png"))[None]
    with pytest.raises(ImageError, match="holds 64x64 masks; the generator makes 32x32 images"):
        Restorer(**kwargs)({"image": image, "mask": np.ones((1, 64, 64), np.float32)})
    with pytest.raises(ImageError, match="a 'mask' column is for task 'inpaint', not 'superres'"):
        Restorer(**kwargs, task="superres", factor=4)({"image": image[:, ::4, ::4], "mask": np.ones((1, 32, 32), np.float32)})


def test_restorer_masks_per_row(cluster: object, plan: Path, inputs: Path, tmp_path: Path) -> None:
    # A "mask" column instead of a mask option: rows with the same mask (0 and 2) are restored
    # as one batch, the other alone; each as a local run with that mask file restores it.
    right, bottom = np.ones((2, 32, 32), np.float32)
    right[:, 20:], bottom[22:] = 0, 0.2  # 0.2 is "missing" (above 0.5 is observed)
    masks = {"img0": right, "img1": bottom, "img2": right}
    kwargs = dict(engine=str(plan), forward_backend="torch", degrade=True, steps=4, candidates=2, log_every=2,
                  device="cpu", compile=False, deterministic=True)
    items = [{"id": k, "image": np.asarray(Image.open(inputs / f"{name}.png")), "mask": masks[name]} for k, name in enumerate(masks)]
    rows = ray.data.from_items(items).map_batches(Restorer, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=1),
                                                  num_cpus=1, batch_size=3).take_all()
    for mask, names in ((right, ["img0", "img2"]), (bottom, ["img1"])):
        Image.fromarray((mask > 0.5).astype(np.uint8) * 255).save(tmp_path / "mask.png")
        run_job(RunOptions(inputs=[str(inputs / f"{name}.png") for name in names], out=tmp_path / "local", mask=str(tmp_path / "mask.png"),
                           batch_size=2, **kwargs))  # type: ignore[arg-type]
    for row in rows:
        name = list(masks)[row["id"]]
        assert np.array_equal(row["restored"], np.asarray(Image.open(tmp_path / "local" / name / "restored.png"))), name
        metrics = json.loads((tmp_path / "local" / name / "report.json").read_text())["metrics"]
        assert row["psnr_missing_region"] == pytest.approx(metrics["psnr_missing_region"], abs=1e-4), name


def test_more_workers_than_the_cluster_holds_is_one_line(cluster: object, plan: Path, inputs: Path, tmp_path: Path) -> None:
    # Ray would wait for room that never comes: the job says so at once instead of hanging.
    from lbrgm_fast.errors import UserError

    with pytest.raises(UserError, match="room for 2 workers of 0 GPUs and 1 CPU, not 3"):
        run_ray_job(options(plan, inputs, tmp_path), "local", workers=3)
    assert not list(tmp_path.iterdir())
