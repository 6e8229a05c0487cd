"""Restoring on a Ray cluster: `lbrgm-fast run --ray`, and `Restorer` for Ray Data pipelines.

A cluster job is a local job (`lbrgm_fast.job`) spread over Ray actors. The driver checks the
options and selects the inputs as `run_job` does (finished ones are skipped, interrupted ones
resumed with --resume), cuts the rest into batches of --batch-size and hands them to workers.
Each worker is an actor (one per GPU, or per CPU on CPU clusters) holding one `JobWorker`: the
models are loaded once and the compiled step is reused batch after batch, and the worker writes
each input's folder straight into --out, atomically, exactly as a local run does, so --out must
be a filesystem every node sees at the same path (and so must the inputs, the checkpoint and
the folder the job is started from: workers resolve relative paths from it).

A worker that dies (killed, out of host memory, node lost) is restarted by Ray (up to
`MAX_RESTARTS` times) and its batch goes to the next free worker, `MAX_ATTEMPTS` tries in all: inputs it had finished are kept (their
report.json is new), the others continue from their last saved state (`state.pt`). A bad input
fails alone, as in a local job.

Needs the `ray` extra: `pip install "lbrgm-fast[ray]"`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lbrgm_fast.errors import ImageError, UserError
from lbrgm_fast.job import InputOutcome, JobWorker, RunOptions, SilentReporter, check_options, input_metrics, load_worker, observation_factor, select_inputs
from lbrgm_fast.operators import Inpainting, Operator, SuperResolution
from lbrgm_fast.progress import JobProgress, WorkerProgress
from lbrgm_fast.runtime import resolve_device, retained_host_memory
from lbrgm_fast.runtime.reproducibility import configure_process

try:
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
except ImportError:
    raise UserError('--ray needs Ray, which is not installed: pip install "lbrgm-fast[ray]"') from None

#: Tries per batch: a batch whose worker died this many times fails (its finished inputs stay done).
MAX_ATTEMPTS = 3
#: Restarts Ray gives each worker after it dies (it reloads the models).
MAX_RESTARTS = 4
#: Seconds between progress updates while batches run.
POLL_SECONDS = 0.25


class JobReporter(Protocol):
    """What a cluster job tells its caller (the CLI renders it; tests can record it)."""

    def note(self, message: str) -> None: ...

    def update(self, progress: JobProgress) -> None: ...

    def job_finished(self) -> None:
        """Called once the job ends, however it ends (done, Ctrl-C, an error)."""


class SilentJobReporter:
    def note(self, message: str) -> None:
        pass

    def update(self, progress: JobProgress) -> None:
        pass

    def job_finished(self) -> None:
        pass


class _NoteList(SilentReporter):
    """A `job.Reporter` for a worker: keeps its notes for the driver, shows no step progress."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def take(self) -> list[str]:
        """The notes kept since the last call (each reaches the driver once)."""
        notes, self.notes = self.notes, []
        return notes


@dataclass
class _WorkerInfo:
    pid: int
    host: str
    threads: int  # torch's CPU threads in the worker: the CPUs Ray gave it
    notes: list[str]
    error: str | None  # a UserError while loading (a bad checkpoint, a node without the shared folder)


@dataclass
class _BatchAnswer:
    pid: int  # the worker's process
    seconds: float  # spent in the worker on this batch
    outcomes: list[InputOutcome]  # the batch's inputs with their outcomes filled in
    notes: list[str]  # the worker's notes while restoring it ("resuming ... at step ...")


class _RestoreWorker:
    """A Ray actor: one `JobWorker` (models loaded once), restoring batch after batch."""

    def __init__(self, options: RunOptions, cwd: str) -> None:
        self.reporter = _NoteList()
        self.error: str | None = None
        try:
            if not Path(cwd).is_dir():
                raise UserError(f"{cwd} (where the job was started) is not on {socket.gethostname()}: run from a shared folder")
            os.chdir(cwd)  # relative inputs, --out, --mask ... mean what they mean to the driver
            # One torch thread per CPU Ray gave this actor (Ray's environment may say 1 whatever
            # it gave), so a worker holding a whole node's CPUs uses them.
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
            configure_process()
            self.device = resolve_device(options.device)
            self.worker: JobWorker = load_worker(options, self.device, self.reporter)
        except UserError as exc:
            self.error = str(exc)

    def describe(self) -> _WorkerInfo:
        return _WorkerInfo(os.getpid(), socket.gethostname(), torch.get_num_threads(), self.reporter.take(), self.error)

    def restore(self, inputs: list[InputOutcome], resume: bool) -> _BatchAnswer:
        began = time.perf_counter()
        options = self.worker.options
        with retained_host_memory(enabled=options.retain_host_memory and self.device.type == "cpu"):
            self.worker.restore(inputs, resume=resume)
        return _BatchAnswer(os.getpid(), time.perf_counter() - began, inputs, self.reporter.take())


@dataclass
class _Batch:
    indices: list[int]  # into the job's outcomes
    resume: bool
    attempts: int = 0
    #: Each input's report.json before the batch was first given out ((mtime_ns, size) or None):
    #: a different one afterwards was written by this job.
    reports_before: dict[int, tuple[int, int] | None] = dataclasses.field(default_factory=dict)


def _report_stat(folder: Path) -> tuple[int, int] | None:
    try:
        stat = (folder / "report.json").stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _finished_outcome(outcome: InputOutcome) -> InputOutcome:
    """The outcome of an input a worker finished before it died, read back from its report.json."""
    assert outcome.folder is not None
    report = json.loads((outcome.folder / "report.json").read_text())
    status = "done" if report["status"] == "done" else "failed"
    return dataclasses.replace(outcome, status=status, message=report.get("stopped") or "", notes=report["notes"],
                               metrics=report["metrics"], timings=report["timings"])


def init_ray(**kwargs: object) -> None:
    """`ray.init(**kwargs)`, called from an empty folder kept for it
    (`$XDG_CACHE_HOME/lbrgm-fast/ray-driver`, default ~/.cache/...).

    Ray puts the driver's working directory on every worker's sys.path, ahead of the installed
    packages, and a cluster it starts runs its workers in that directory. Started from a source
    checkout of lbrgm-fast, the workers would import its bare lbrgm_fast/ folder, which lacks
    kernels/ and export/ (they install as lbrgm_fast.kernels and lbrgm_fast.export), and die
    on import. The folder must outlive the cluster (the workers' working directory), so it is
    not a temporary one. Call this instead of `ray.init` in a process that may run from a
    checkout (the tests do).
    """
    neutral = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lbrgm-fast" / "ray-driver"
    neutral.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(neutral)
    try:
        ray.init(**kwargs)
    finally:
        os.chdir(here)


def _connect(address: str) -> bool:
    """Join (or, for "local", start) the cluster; True when this call started Ray, so the job
    shuts it down. A process that has already called `ray.init` keeps its cluster."""
    if ray.is_initialized():
        return False
    absent = f"--ray {address}: no Ray cluster there ({{}}); start one with `ray start --head` or use --ray local"
    if address not in ("local", "auto") and "://" not in address:
        # Ray retries an unreachable HEAD:PORT for minutes before giving up: ask once first.
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--ray {address}: give local, auto, HOST:PORT or ray://HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise UserError(absent.format(exc)) from None
    try:
        if address == "local":
            init_ray(address="local", include_dashboard=False, configure_logging=False)
        else:
            init_ray(address=address, configure_logging=False)
    except ConnectionError as exc:
        raise UserError(absent.format(exc)) from None
    except ValueError as exc:  # e.g. ray:// without Ray Client's package
        raise UserError(f"--ray {address}: {str(exc).splitlines()[0]}") from None
    return True


def _worker_count(options: RunOptions, workers: int | None, gpus_per_worker: float | None, batches: int) -> tuple[int, float, int]:
    """(workers, GPUs per worker, CPUs per worker): by default one worker per GPU of the cluster,
    or per CPU without GPUs. GPU workers hold one CPU each; CPU workers share the nodes' CPUs
    (`cpus_per_worker`), so fewer workers than CPUs leave no core idle."""
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus and options.device != "cpu" else 0.0
    if gpus_per_worker == 0 and options.device == "cuda":
        raise UserError("--device cuda on Ray needs GPUs for the workers: give --gpus-per-worker (e.g. 1)")
    room = min(int(gpus // gpus_per_worker) if gpus_per_worker else int(cpus), int(cpus))  # each worker holds one CPU too
    if room < 1 or (workers or 0) > room:
        # Ray would wait for room that never comes.
        raise UserError(f"the Ray cluster has {gpus:g} GPUs and {cpus:g} CPUs: room for {room} workers of "
                        f"{gpus_per_worker:g} GPUs and 1 CPU{'' if workers is None else f', not {workers}'}")
    count = min(workers or room, batches)
    if gpus_per_worker:
        return count, gpus_per_worker, 1
    node_cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return count, gpus_per_worker, cpus_per_worker(node_cpus, count)


def cpus_per_worker(node_cpus: Sequence[float], workers: int) -> int:
    """The most CPUs each of `workers` CPU workers can hold on nodes with `node_cpus` CPUs, every
    worker on one node: the largest k with sum(floor(c / k)) >= workers (1 when even 1 does not
    fit; `_worker_count` refuses that case first). E.g. nodes of 8 and 8 CPUs: 1 worker 8, 3
    workers 4 (two on one node, one on the other), 16 workers 1."""
    best = 1
    for k in range(2, int(max(node_cpus, default=1)) + 1):
        if sum(int(c // k) for c in node_cpus) < workers:
            break  # fewer fit for every larger k too
        best = k
    return best


def run_ray_job(
    options: RunOptions,
    address: str = "local",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    reporter: JobReporter | None = None,
) -> list[InputOutcome]:
    """`run_job` on a Ray cluster: restore every input of `options` with `workers` actors.

    Args:
        options: As for `run_job`; --out must be shared by every node.
        address: "local" (start Ray on this machine), "auto" (the cluster `ray start` made
            here) or a cluster address ("ray://head:10001", "head:6379").
        workers: Actors to start (default: one per GPU, or per CPU without GPUs; never more
            than batches).
        gpus_per_worker: GPUs each actor holds (default 1 on a cluster with GPUs, else 0).
        reporter: Receives notes and the job's progress.

    Returns one outcome per input, in the order a local run gives them.
    """
    reporter = reporter or SilentJobReporter()
    check_options(options)
    if options.profile is not None:
        raise UserError("--profile traces one process: profile a local run (without --ray)")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker is not None and (gpus_per_worker < 0 or (gpus_per_worker > 0 and options.device == "cpu")):
        raise UserError(f"--gpus-per-worker {gpus_per_worker:g} with --device {options.device}: give 0 for CPU workers")
    outcomes, pending = select_inputs(options)
    if not pending:
        return outcomes
    index = {id(o): i for i, o in enumerate(outcomes)}
    queue = deque(
        _Batch([index[id(o)] for o in pending[start : start + options.batch_size]], resume=options.resume)
        for start in range(0, len(pending), options.batch_size)
    )
    started_ray = _connect(address)
    actors: list = []
    try:
        count, gpus, cpus = _worker_count(options, workers, gpus_per_worker, len(queue))
        actor_class = ray.remote(_RestoreWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS, max_task_retries=0)
        actors = [actor_class.remote(options, os.getcwd()) for _ in range(count)]
        infos: list[_WorkerInfo] = ray.get([a.describe.remote() for a in actors])
        note = _once(reporter.note)  # every worker loads the same models: one copy of their notes
        note(n for info in infos for n in info.notes)
        if any(info.error for info in infos):
            raise UserError(next(info.error for info in infos if info.error))  # type: ignore[arg-type]
        note([f"Ray: {len(infos)} worker(s) on {len({i.host for i in infos})} node(s), "
              f"{'/'.join(sorted({str(i.threads) for i in infos}))} CPU thread(s) each"])
        progress = JobProgress(total=len(pending), done=0, failed=0, elapsed=0.0,
                               workers=[WorkerProgress(i, info.pid, info.host, info.threads) for i, info in enumerate(infos)])
        _drive(actors, queue, outcomes, progress, options, reporter, note)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started_ray:
            ray.shutdown()
        reporter.job_finished()
    return outcomes


def _once(note: Callable[[str], None]) -> Callable[[Iterable[str]], None]:
    """`note` for each message it has not been given before."""
    seen: set[str] = set()

    def tell(messages: Iterable[str]) -> None:
        for message in messages:
            if message not in seen:
                seen.add(message)
                note(message)

    return tell


def _drive(actors: list, queue: deque[_Batch], outcomes: list[InputOutcome], progress: JobProgress, options: RunOptions,
           reporter: JobReporter, note: Callable[[Iterable[str]], None]) -> None:
    """Give batches to idle workers until every batch is done, retrying those whose worker died.

    A worker whose process died is asked `describe` until Ray has restarted it (calls made while
    it restarts fail at once) and only then given work again; one Ray gave up on, or whose
    models no longer load (restarted on a node without the shared folder), is dropped.
    """
    start = time.perf_counter()
    idle = list(range(len(actors)))
    running: dict = {}  # ObjectRef -> (worker, batch or None for a probe of a restarting worker, start time)

    def finish(i: int, outcome: InputOutcome) -> None:
        outcomes[i] = outcome
        progress.done += outcome.status == "done"
        progress.failed += outcome.status != "done"

    def probe(worker: int) -> None:
        running[actors[worker].describe.remote()] = (worker, None, time.perf_counter())

    while queue or any(batch is not None for _, batch, _ in running.values()):
        while queue and idle:
            worker, batch = idle.pop(0), queue.popleft()
            if batch.attempts == 0:
                batch.reports_before = {i: _report_stat(outcomes[i].folder) for i in batch.indices}  # type: ignore[arg-type]
            ref = actors[worker].restore.remote([outcomes[i] for i in batch.indices], batch.resume)
            running[ref] = (worker, batch, time.perf_counter())
            progress.workers[worker].running = [outcomes[i].name for i in batch.indices]
        if not running:  # every worker is gone
            for batch in queue:
                for i in batch.indices:
                    finish(i, dataclasses.replace(outcomes[i], status="failed", message="every Ray worker died; --resume continues it"))
            queue.clear()
            break
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
        for ref in ready:
            worker, batch, began = running.pop(ref)
            shown = progress.workers[worker]
            try:
                answer = ray.get(ref)
            except RayActorError as exc:  # its process died
                shown.pid, shown.running = None, []
                if batch is not None:
                    if isinstance(exc, ActorUnavailableError):
                        # Unreachable, not known dead: its process may still be writing this
                        # batch's folders. Ask Ray to stop it (and restart it) before another
                        # worker takes the batch; a node cut off may still finish a write, but
                        # every file is written atomically, so a folder is never half-written.
                        ray.kill(actors[worker], no_restart=False)
                    _retry(batch, exc, outcomes, queue, options, finish)
                    probe(worker)  # is Ray restarting it?
                elif isinstance(exc, ActorUnavailableError):  # restarting: ask again
                    time.sleep(POLL_SECONDS)
                    probe(worker)
                # else: dead for good (Ray gave up restarting it): the worker is dropped
                continue
            except RayTaskError as exc:  # a bug, not a bad input (those fail alone, inside the batch)
                assert batch is not None
                for i in _keep_finished(batch, outcomes, finish):  # inputs written before it are done
                    finish(i, dataclasses.replace(outcomes[i], status="failed", message=f"worker error: {str(exc.cause or exc).splitlines()[0]}"))
                shown.running = []
                idle.append(worker)
                continue
            note(answer.notes)
            shown.pid = answer.pid
            if batch is None:  # a restarted worker, its models loaded again
                if answer.error:
                    note([f"Ray worker {worker} dropped: {answer.error}"])
                    continue
            else:
                shown.images, shown.batches = shown.images + len(answer.outcomes), shown.batches + 1
                shown.busy_seconds += time.perf_counter() - began
                shown.compute_seconds += answer.seconds
                shown.running = []
                for i, outcome in zip(batch.indices, answer.outcomes):
                    finish(i, outcome)
            idle.append(worker)
        progress.elapsed = time.perf_counter() - start
        reporter.update(progress)


def _keep_finished(batch: _Batch, outcomes: list[InputOutcome], finish) -> list[int]:  # noqa: ANN001
    """Finish the inputs of `batch` whose report.json this job wrote (their outcome read back
    from it); returns the others."""
    rest = []
    for i in batch.indices:
        if _report_stat(outcomes[i].folder) != batch.reports_before[i]:  # type: ignore[arg-type]
            finish(i, _finished_outcome(outcomes[i]))
        else:
            rest.append(i)
    return rest


def _retry(batch: _Batch, exc: Exception, outcomes: list[InputOutcome], queue: deque[_Batch], options: RunOptions, finish) -> None:  # noqa: ANN001
    """After a worker died in `batch`: keep what it finished, give the rest out again (resuming
    from their saved state; with --overwrite from the start), or fail it after `MAX_ATTEMPTS`."""
    batch.attempts += 1
    rest = _keep_finished(batch, outcomes, finish)
    if not rest:
        return
    if batch.attempts >= MAX_ATTEMPTS:
        reason = str(exc).splitlines()[0]
        for i in rest:
            finish(i, dataclasses.replace(outcomes[i], status="failed",
                                          message=f"its Ray worker died {batch.attempts} times ({reason}); --resume continues it"))
        return
    queue.append(_Batch(rest, resume=not options.overwrite, attempts=batch.attempts, reports_before=batch.reports_before))


# ---------------------------------------------------------------------------------------------
# Ray Data


class Restorer:
    """Restores batches of images in a Ray Data pipeline:

        ds.map_batches(Restorer, fn_constructor_kwargs={"checkpoint": "ffhq.pkl", "mask_preset": "mouth"},
                       compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=8)

    Each actor loads the models once and keeps one compiled step for all its batches.

    Args (`fn_constructor_kwargs`): any `RunOptions` field but `inputs`, `out` and `samples`, meaning what
        the `run` option of that name means (checkpoint or engine, task, mask_preset or mask,
        factor, kernel, method, steps, candidates, seed, restarts, device, ...). `degrade=True`
        makes each observation from its clean image with the task's operator (and scores it).

    A batch is a dict of numpy arrays (Ray Data's "numpy" batch format):
        "image": [B, H, W, 3] uint8 (or float in [0, 1]): the observations, at the generator's
            resolution (for super-resolution: the low-resolution images, all one size);
        "mask" (optional, inpainting): [B, H, W], 1 where a pixel is observed, 0 where it is
            missing (values above 0.5 count as observed): one mask per row instead of the
            constructor's;
        "ground_truth" (optional): [B, H, W, 3] clean images for metrics and oracle early stopping.
    It is returned with "restored" [B, H, W, 3] uint8 at the generator's resolution and one
    column per metric of report.json ("best_step", "final_total", ..., "psnr" with a ground truth).
    """

    def __init__(self, **options: object) -> None:
        if "inputs" in options or "out" in options:
            raise UserError("Restorer takes its images from the dataset: give no inputs or out")
        if options.get("samples") is not None:
            raise UserError("Restorer returns one restoration per row: samples are for run_job / `run --samples`")
        self.options = RunOptions(inputs=[], **options)  # type: ignore[arg-type]
        check_options(self.options)
        configure_process()
        self.device = resolve_device(self.options.device)
        #: Inpainting without a mask spec: each batch's "mask" column makes its operators, and
        #: the worker (which would build the job's one operator from the spec) is told "project".
        self.masks_per_row = self.options.task == "inpaint" and not (self.options.mask or self.options.mask_preset)
        spec = dataclasses.replace(self.options, task="project") if self.masks_per_row else self.options
        self.worker = load_worker(spec, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = _as_float(batch["image"], "image")  # [B, 3, h, w]
        truth = _as_float(batch["ground_truth"], "ground_truth") if "ground_truth" in batch else None
        rows = len(images)
        if "mask" in batch and self.options.task != "inpaint":
            raise ImageError(f"a 'mask' column is for task 'inpaint', not '{self.options.task}'")
        masks = _as_masks(batch["mask"], rows, self.worker.resolution) if "mask" in batch else None  # [B, H, W] bool
        groups: dict[bytes, list[int]] = {}  # rows sharing one mask share one operator
        for r in range(rows):
            groups.setdefault(b"" if masks is None else masks[r].tobytes(), []).append(r)
        restored = torch.zeros(rows, 3, self.worker.resolution, self.worker.resolution)
        metrics: list[dict] = [{} for _ in range(rows)]
        for key, members in groups.items():
            operator = self._operator(images.shape[-1], None if masks is None else masks[members[0]])
            observation, gt = images[members], None if truth is None else truth[members]
            if self.options.degrade:
                gt, observation = observation, operator(observation)
            mask = None if (observed := operator.observed()) is None else observed[0].cpu()
            if mask is not None:
                observation = observation * mask
            result = self.worker.reconstructor(gt is not None).run(observation, operator, ground_truth=gt, seed=self.options.seed, restarts=self.options.restarts)
            for k, r in enumerate(members):
                restored[r] = result.images[k]
                metrics[r] = input_metrics(result, k, None if gt is None else gt[k], mask, self.worker.models.monitor)
        out = dict(batch)
        out["restored"] = (restored.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        for name in dict.fromkeys(k for m in metrics for k in m):
            values = [m.get(name) for m in metrics]
            # Missing values (a metric some rows lack) become NaN; otherwise ints stay ints.
            out[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64) if None in values else np.array(values)
        return out

    def _operator(self, side: int, mask: np.ndarray | None) -> Operator:
        """The operator for rows of `side` px images with `mask` ([H, W], 1 = observed)."""
        resolution, options = self.worker.resolution, self.options
        if options.task == "superres":
            factor = options.factor if options.degrade else observation_factor(side, resolution, options.factor)
            if options.degrade and side != resolution:
                raise ImageError(f"with degrade, images are clean {resolution} px images; got {side} px")
            return SuperResolution(factor, kernel=options.kernel)  # type: ignore[arg-type]
        if side != resolution:
            raise ImageError(f"images are {side} px; the generator makes {resolution} px (resize them first)")
        if mask is not None and options.task == "inpaint":
            return Inpainting(torch.as_tensor(mask, dtype=torch.float32))
        if self.masks_per_row:
            raise ImageError("inpainting without mask_preset or mask needs a 'mask' column")
        assert self.worker.shared_operator is not None
        return self.worker.shared_operator


def _as_masks(masks: np.ndarray, rows: int, resolution: int) -> np.ndarray:
    """The "mask" column, [B, H, W] with values in [0, 1] -> [B, H, W] bool, True where observed
    (above 0.5); each mask the generator's `resolution` square."""
    array = np.asarray(masks)
    if array.ndim != 3 or len(array) != rows:
        raise ImageError(f"column 'mask' must hold one [H, W] mask per image, got {list(array.shape)} for {rows} images")
    if array.shape[1:] != (resolution, resolution):
        raise ImageError(f"column 'mask' holds {array.shape[2]}x{array.shape[1]} masks; the generator makes {resolution}x{resolution} images")
    return np.ascontiguousarray(array > 0.5)


def _as_float(images: np.ndarray, column: str) -> torch.Tensor:
    """[B, H, W, 3] uint8 or float in [0, 1] -> [B, 3, H, W] float32."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ImageError(f"column {column!r} must hold [B, H, W, 3] RGB images, got {list(array.shape)}")
    # One float32 copy in numpy: Ray Data hands read-only (zero-copy) arrays, which torch would
    # wrap with a warning; the copy is made by the conversion to float anyway.
    values = array.astype(np.float32)
    tensor = torch.from_numpy(values / 255 if array.dtype == np.uint8 else values).permute(0, 3, 1, 2)
    return tensor.contiguous()


__all__ = ["MAX_ATTEMPTS", "JobReporter", "Restorer", "SilentJobReporter", "run_ray_job"]
