"""`run_bench` / `render_table`: well-formed results on tiny32, mode names, the FLOP count.

The compiled run uses φ at 32 px and batch 2, the shapes of test_step's compiled test, so its
graphs are found in Inductor's on-disk cache when both run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.table import Table

from lbrgm_fast import bench
from lbrgm_fast.bench import PROFILE_STEPS, SHAPES, BenchOptions, default_modes, parse_mode, render_table, run_bench
from lbrgm_fast.errors import UserError
from lbrgm_fast.io import json_text
from lbrgm_fast.perceptual import LpipsAlex
from lbrgm_fast.runtime.step import StepOptions
from lbrgm_fast.state import ReconstructionState

from reference import nvidia_config

KEYS = {
    "shape", "batch", "mode", "device", "threads", "steps", "gflop_per_step", "ms_per_step",
    "cpu_ms_per_step", "ms_per_image_step", "image_steps_per_s", "peak_memory_bytes", "tflops",
    "compile_seconds", "loss_finite", "speedup_vs_eager", "host_memory_retained",
}
GLIBC = platform.libc_ver()[0] == "glibc"


def check_result(r: dict, mode: str) -> None:
    assert set(r) == KEYS
    assert (r["shape"], r["batch"], r["mode"], r["device"], r["steps"]) == ("tiny32", 2, mode, "cpu", 2)
    assert r["threads"] == torch.get_num_threads()
    assert r["ms_per_step"] > 0 and r["cpu_ms_per_step"] > 0
    assert r["ms_per_image_step"] == pytest.approx(r["ms_per_step"] / 2)
    assert r["image_steps_per_s"] == pytest.approx(2000 / r["ms_per_step"])
    assert r["tflops"] == pytest.approx(r["gflop_per_step"] / r["ms_per_step"])  # GFLOP/ms = TFLOP/s
    # Read from /proc/self/status on Linux: the suite's machines always measure it.
    assert r["peak_memory_bytes"] is not None and r["peak_memory_bytes"] > 2**20
    assert r["loss_finite"] is True


def test_eager_bench_results_are_well_formed(tmp_path: Path) -> None:
    seen = []
    options = BenchOptions(
        shapes=("tiny32",), modes=("eager-fp32",), batch_sizes=(2,), steps=2, device="cpu", vgg_resolution=32, profile_dir=tmp_path,
        retain_host_memory=True,
    )
    results = run_bench(options, on_result=seen.append)
    assert seen == results and len(results) == 1
    check_result(results[0], "eager-fp32")
    assert results[0]["host_memory_retained"] is GLIBC  # the setting itself: test_host_memory.py
    assert results[0]["speedup_vs_eager"] == 1.0 and results[0]["compile_seconds"] == 0.0
    # One strict JSON document, as `bench --json` prints it (io.json_text).
    assert json.loads(json_text(results), parse_constant=pytest.fail) == json.loads(json.dumps(results))
    # The profile: PROFILE_STEPS steps of the measured mode, each under its own label.
    profiled = tmp_path / "tiny32-batch2" / "eager-fp32"
    trace = json.loads((profiled / "trace.json").read_text())
    steps = [e for e in trace["traceEvents"] if e.get("name") == "lbrgm_step" and e.get("ph") == "X"]
    assert len(steps) == PROFILE_STEPS
    assert "aten::convolution" in (profiled / "ops.txt").read_text()


def test_flop_count_matches_the_convolution_arithmetic() -> None:
    # Independent count for φ alone at 32 px: each 3x3 conv costs 2·9·C_in·C_out·H·W FLOPs
    # forward and the same again for its input gradient (the image needs every one of them);
    # weights are frozen, so there is no weight gradient. tiny32's generator adds a small share.
    vgg = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8), (256, 256, 8),
           (256, 512, 4), (512, 512, 4), (512, 512, 4), (512, 512, 2), (512, 512, 2), (512, 512, 2)]
    phi_forward = sum(2 * 9 * cin * cout * side * side for cin, cout, side in vgg)
    (result,) = run_bench(BenchOptions(shapes=("tiny32",), modes=("eager-fp32",), batch_sizes=(1,), steps=1, device="cpu", vgg_resolution=32))
    flops = result["gflop_per_step"] * 1e9
    assert result["host_memory_retained"] is False  # the library leaves the allocator alone unless asked
    assert 2 * phi_forward < flops < 2 * phi_forward * 1.5


@pytest.mark.slow
def test_compiled_bench_reports_speedup_and_compile_time() -> None:
    results = run_bench(BenchOptions(shapes=("tiny32",), modes=("compiled-fp32", "eager-fp32"), batch_sizes=(2,), steps=2, device="cpu", vgg_resolution=32))
    assert [r["mode"] for r in results] == ["eager-fp32", "compiled-fp32"]  # the baseline first
    for r in results:
        check_result(r, r["mode"])
    eager, compiled = results
    assert compiled["speedup_vs_eager"] == pytest.approx(eager["ms_per_step"] / compiled["ms_per_step"])
    assert compiled["compile_seconds"] > 0
    table = render_table(results)
    assert isinstance(table, Table) and table.row_count == 2
    with Console(width=200, record=True) as console:
        console.print(table)
    assert "compiled-fp32" in console.export_text()


def test_modes_and_options() -> None:
    assert parse_mode("eager-fp32") == StepOptions()
    assert parse_mode("compiled-bf16-graphs") == StepOptions(compile=True, precision="bf16", cuda_graphs=True)
    assert parse_mode("compiled-fp16") == StepOptions(compile=True, precision="fp16")
    for bad in ("fast", "compiled", "compiled-fp8", "eager-fp32-graphs-x"):
        with pytest.raises(UserError, match="mode"):
            parse_mode(bad)
    assert default_modes(torch.device("cpu"))[0] == "eager-fp32"
    assert "compiled-bf16-graphs" in default_modes(torch.device("cuda"))
    with pytest.raises(UserError, match="shape"):
        run_bench(BenchOptions(shapes=("ffhq512",), device="cpu"))
    with pytest.raises(UserError, match="CUDA graphs"):
        run_bench(BenchOptions(shapes=("tiny32",), modes=("eager-fp32-graphs",), device="cpu"))
    with pytest.raises(UserError, match=r"--batch-sizes and --steps must be >= 1, got batch sizes \[1, 0\]"):
        run_bench(BenchOptions(shapes=("tiny32",), batch_sizes=(1, 0), device="cpu"))
    with pytest.raises(UserError, match="and 0 steps"):
        run_bench(BenchOptions(shapes=("tiny32",), steps=0, device="cpu"))


@pytest.mark.parametrize("name", ["tiny32", "ffhqlike64"])
def test_fixture_shapes_match_the_fixtures(name: str) -> None:
    assert SHAPES[name] == nvidia_config(name)


def test_tracked_mode_times_the_step_with_per_step_oracle_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """"-tracked" is the step plus LPIPS(alex) and keeping the best iterate (the loop's
    `track_every=1`), timed against the bare step in the same run."""
    assert parse_mode("eager-fp32-tracked") == parse_mode("eager-fp32")
    assert parse_mode("compiled-bf16-graphs-tracked") == StepOptions(compile=True, precision="bf16", cuda_graphs=True)
    with pytest.raises(UserError, match="tracked"):
        parse_mode("eager-tracked")
    # Observe the tracking: every call of the tracked step (warm-up, untimed and timed rounds, the
    # finite-loss check) scores its images with the LPIPS(alex) monitor against the truth and
    # hands that score to keep_best with the next step number; the bare step does neither.
    calls = {"tracked_steps": 0}
    scored: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    kept: list[int] = []
    real_tracked, real_forward, real_keep_best = bench._tracked, LpipsAlex.forward, ReconstructionState.keep_best

    def counting_tracked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        step = real_tracked(*args, **kwargs)

        def counted():  # noqa: ANN202
            calls["tracked_steps"] += 1
            return step()

        return counted

    def forward(self, x, y, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        scored.append((tuple(x.shape), tuple(y.shape)))
        return real_forward(self, x, y, *args, **kwargs)

    def keep_best(self, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        kept.append(step)
        return real_keep_best(self, step, *args, **kwargs)

    monkeypatch.setattr(bench, "_tracked", counting_tracked)
    monkeypatch.setattr(LpipsAlex, "forward", forward)
    monkeypatch.setattr(ReconstructionState, "keep_best", keep_best)
    options = BenchOptions(shapes=("tiny32",), modes=("eager-fp32", "eager-fp32-tracked"), batch_sizes=(2,), steps=2, device="cpu", vgg_resolution=32)
    bare, tracked = run_bench(options)
    assert calls["tracked_steps"] >= options.steps + 1  # at least the timed rounds and the untimed one
    assert scored == [((2, 3, 32, 32), (2, 3, 32, 32))] * calls["tracked_steps"]
    assert kept == list(range(calls["tracked_steps"]))
    check_result(tracked, "eager-fp32-tracked")
    assert bare["mode"] == "eager-fp32" and tracked["speedup_vs_eager"] == pytest.approx(bare["ms_per_step"] / tracked["ms_per_step"])
