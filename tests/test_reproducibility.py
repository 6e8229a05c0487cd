"""The reproducibility promises (runtime/reproducibility.py, docs/reproducibility.md).

The runs go through subprocesses with a chosen `OMP_NUM_THREADS`, so that the two-thread case
is exercised whatever the test runner's own thread count, and several runs share one process
(with the heap moved between them), as in a pipeline, a long-lived worker or a resumed job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbrgm_fast.errors import UserError
from lbrgm_fast.runtime import reproducibility

from reference import FIXTURES

TESTS = Path(__file__).parent

#: Three runs of one batch in one process, each by a new Reconstructor, with allocations of
#: odd sizes kept between them so that the next run's buffers land elsewhere.
RUNS_IN_ONE_PROCESS = """
import sys
import numpy as np
import torch
from lbrgm_fast.runtime.reproducibility import configure_process
configure_process()
from lbrgm_fast import Inpainting, Reconstructor, VGG16Features
from reference import nvidia_generator

deterministic, out = sys.argv[1] == "deterministic", sys.argv[2]
G = nvidia_generator("tiny32")
phi = VGG16Features.random(0, resolution=16)
eyes = Inpainting.from_preset("eyes", 32)
# Seeded noise, not G's output: made outside the run, at the process's thread count, G's
# output would already differ by rounding between the processes compared.
clean = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
kept, results = [], {}
for run in range(3):
    rec = Reconstructor(G, phi, steps=6, candidates=3, early_stop="none", deterministic=deterministic)
    result = rec.run(eyes(clean), eyes, seed=0)
    results[f"w_plus_{run}"], results[f"images_{run}"] = result.w_plus.numpy(), result.images.numpy()
    kept.append(torch.empty(4099 * (run + 1) + 7))
results["threads"] = np.array(torch.get_num_threads())
np.savez(out, **results)
"""


def runs_in_one_process(tmp_path: Path, mode: str, threads: int) -> dict[str, np.ndarray]:
    script = tmp_path / "runs.py"
    script.write_text(RUNS_IN_ONE_PROCESS)
    out = tmp_path / f"{mode}-{threads}.npz"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(TESTS)}
    done = subprocess.run([sys.executable, str(script), mode, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


def test_deterministic_runs_are_bitwise_identical_in_a_process_and_across_thread_counts(tmp_path: Path) -> None:
    two = runs_in_one_process(tmp_path, "deterministic", threads=2)
    one = runs_in_one_process(tmp_path, "deterministic", threads=1)
    assert int(two["threads"]) == 2  # the process's own thread count is given back after each run
    for results in (two, one):
        for run in (1, 2):
            assert np.array_equal(results[f"w_plus_{run}"], two["w_plus_0"]), run
            assert np.array_equal(results[f"images_{run}"], two["images_0"]), run
    assert np.array_equal(one["w_plus_0"], two["w_plus_0"])


def test_default_runs_in_a_process_agree_up_to_rounding(tmp_path: Path) -> None:
    # The default promise: bitwise where the CPU's math libraries are deterministic at a fixed
    # thread count (so on the AMD EPYC development CPUs); elsewhere only rounding may differ.
    # On an Intel Xeon (AVX-512, AMX) before MKL's strict reproducibility was set, runs in one
    # process differed by up to 1e-3 in w+ after 6 steps (issue 13); Adam's first steps,
    # lr * g / (|g| + eps), turn rounding in a near-zero gradient into up to lr per step, so the
    # bound is 1e-2, ten times that, and far below what a wrong result would change (O(1)).
    results = runs_in_one_process(tmp_path, "default", threads=2)
    for run in (1, 2):
        assert np.abs(results[f"w_plus_{run}"] - results["w_plus_0"]).max() <= 1e-2
        assert np.abs(results[f"images_{run}"] - results["images_0"]).max() <= 1e-2  # 2.5 grey levels


def test_configure_process_sets_strict_mkl_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.delenv("MKL_CBWR", raising=False)
    reproducibility.configure_process()
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT" and torch.get_num_threads() == threads
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    reproducibility.configure_process()
    assert os.environ["MKL_CBWR"] == "AUTO"


def test_a_deterministic_run_gives_back_the_callers_settings_even_when_it_fails() -> None:
    threads, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with reproducibility.reproducible_run(deterministic=True):
            assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
            assert torch.backends.mkldnn.deterministic
            raise RuntimeError("inside")
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == algorithms
    with reproducibility.reproducible_run(deterministic=False):
        assert torch.get_num_threads() == threads and torch.backends.mkldnn.deterministic
    assert not torch.backends.mkldnn.deterministic


def test_deterministic_is_refused_off_the_cpu() -> None:
    with pytest.raises(UserError, match="--deterministic is for CPU runs"):
        reproducibility.check(True, torch.device("cuda"))
    reproducibility.check(False, torch.device("cuda"))
    reproducibility.check(True, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The command itself, through main() in a subprocess: what only the real entry point sets up.


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def lbrgm_fast(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`lbrgm-fast ARGS` through `main()`, in the environment `env` (default: this one).

    Run from tests/, not the repository root: `python -c` puts the working directory first on
    sys.path, and the root's bare lbrgm_fast/ folder lacks the installed package's kernels/.
    """
    command = [sys.executable, "-c", "import sys; from lbrgm_fast.cli import main; sys.exit(main())", *map(str, args)]
    return subprocess.run(command, env=os.environ if env is None else env, cwd=TESTS, capture_output=True, text=True, timeout=600)


def test_the_command_runs_under_strict_mkl_and_reports_its_promise(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    cache = tmp_path / "xdg"
    env = {"MKL_VERBOSE": "1", "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "2"}
    child_env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "TORCHINDUCTOR_CACHE_DIR")} | env
    done = lbrgm_fast(
        "run", "--checkpoint", str(FIXTURES / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl"),
         "--vgg16", weights["vgg16"], "--alexnet", weights["alexnet"], "--mask-preset", "eyes",
         "--steps", "2", "--candidates", "2", "--device", "cpu", "--no-compile", "--quiet", "--json",
         "--out", tmp_path / "out", face, env=child_env)
    assert done.returncode == 0, done.stderr[-3000:]
    verbose = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "SGEMM" in line]
    assert verbose and all("CNR:AUTO,STRICT" in line and "Dyn:0" in line for line in verbose)
    assert "No CUDA runtime is found" not in done.stderr  # the benign-warning filter
    report = json.loads((tmp_path / "out" / "face" / "report.json").read_text())
    assert report["reproducibility"] | {"promise": None} == {
        "promise": None, "deterministic": False, "device": "cpu", "threads": 2,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl_cbwr": "AUTO,STRICT",
    }
    assert (cache / "lbrgm-fast" / "torchinductor").is_dir()  # the command's compile cache, not torch's /tmp default


def test_the_command_answers_bad_input_with_one_line_and_exit_2(face: Path, tmp_path: Path) -> None:
    done = lbrgm_fast("run", "--checkpoint", tmp_path / "missing.pkl", "--device", "cpu", face)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [f"error: cannot use checkpoint '{tmp_path / 'missing.pkl'}': no such file"]


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: without one, --device cuda is refused earlier, for having no GPU")
def test_the_command_refuses_deterministic_on_the_gpu(face: Path) -> None:
    refused = lbrgm_fast("run", "--checkpoint", FIXTURES / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl",
                         "--deterministic", "--device", "cuda", face)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--deterministic is for CPU runs" in refused.stderr
