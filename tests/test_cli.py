"""The command line end to end on the tiny fixture checkpoint, and its answers to bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lbrgm_fast.cli import app
from lbrgm_fast.demo import run_demo
from lbrgm_fast.operators import Inpainting
from lbrgm_fast.plots import LABEL_BAND

from reference import FIXTURES, nvidia_generator

PICKLE = FIXTURES / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl"
runner = CliRunner()


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An in-range 32 px image from the fixture generator."""
    G = nvidia_generator("tiny32")
    with torch.no_grad():
        img = ((G(torch.randn(1, 32, generator=torch.Generator().manual_seed(0))) + 1) * 127.5).clamp(0, 255)
    path = tmp_path_factory.mktemp("inputs") / "face.png"
    Image.fromarray(img[0].permute(1, 2, 0).round().byte().numpy()).save(path)
    return path


def invoke(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


def base_run(weights: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", str(PICKLE), "--vgg16", weights["vgg16"], "--alexnet", weights["alexnet"],
            "--steps", "4", "--candidates", "2", "--log-every", "2", "--device", "cpu", "--no-compile", "--out", str(out), "--quiet", *extra]


def test_run_inpainting_end_to_end(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    result = invoke(*base_run(weights, tmp_path, str(face), "--mask-preset", "right-half", "--degrade", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary[0]["status"] == "done"
    folder = tmp_path / "face"
    for name in ("restored.png", "merged.png", "observation.png", "latents.npz", "curves.png", "report.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "state.pt").exists()
    report = json.loads((folder / "report.json").read_text())
    assert report["settings"]["method"] == "lbrgm" and report["settings"]["preset"] == "authors"
    assert report["early_stop"] == "oracle" and report["seed"] == 0
    assert report["options"]["retain_host_memory"] is True  # the command line's default (runtime/host_memory.py)
    assert {"candidates", "optimise"} <= set(report["timings"]["seconds"])
    assert report["history"]["step"] == [0, 2, 4]
    latents = np.load(folder / "latents.npz")
    assert latents["w_plus"].shape == (8, 32) and latents["z"].shape == (32,)
    # merged keeps the observed pixels exactly.
    merged = np.asarray(Image.open(folder / "merged.png"))
    original = np.asarray(Image.open(face))
    assert np.array_equal(merged[:, :16], original[:, :16])
    # A second run does not overwrite; --overwrite does.
    again = invoke(*base_run(weights, tmp_path, str(face), "--mask-preset", "right-half"))
    assert again.exit_code == 0 and "already holds a result" in again.output
    # (Without --quiet: stderr is no terminal here, so progress comes as plain lines.)
    forced = invoke(*[a for a in base_run(weights, tmp_path, str(face), "--mask-preset", "right-half", "--overwrite") if a != "--quiet"])
    assert forced.exit_code == 0, forced.output
    assert "face: step 0/4 loss" in forced.output and "face: step 4/4 loss" in forced.output


def test_superres_factor_from_the_input_size(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    low = tmp_path / "low.png"
    Image.open(face).resize((8, 8), Image.BICUBIC).save(low)
    result = invoke(*base_run(weights, tmp_path / "out", str(low), "--task", "superres", "--no-retain-host-memory"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "low" / "report.json").read_text())
    assert "x4" in report["operator"]
    assert report["options"]["retain_host_memory"] is False
    mismatch = invoke(*base_run(weights, tmp_path / "out2", str(low), "--task", "superres", "--factor", "2"))
    assert mismatch.exit_code == 2 and "--factor is 2" in mismatch.output


def test_one_bad_input_does_not_stop_the_others(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = invoke(*base_run(weights, tmp_path / "out", str(face), str(corrupt), str(tmp_path / "missing.png"), "--mask-preset", "eyes"))
    assert result.exit_code == 2
    assert "not a readable image" in result.output and "no such file" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "out" / "face" / "restored.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask-preset", "nose"], "unknown"),
        ([], "--mask FILE or --mask-preset"),
        (["--mask-preset", "eyes", "--method", "magic"], "unknown method"),
        (["--mask-preset", "eyes", "--task", "denoise"], "unknown task"),
        (["--mask-preset", "eyes", "--batch-size", "0"], "batch-size"),
        (["--mask-preset", "eyes", "--memory-budget", "0.5"], "needs the compiled step"),  # base_run: --no-compile
        (["--mask-preset", "eyes", "--memory-budget", "1.5"], "memory budget must be in (0, 1]"),
        (["--task", "superres", "--degrade"], "--degrade with --task superres needs --factor"),
        (["--mask-preset", "eyes", "--ground-truth", "no/such/clean.png"], "no such file or folder"),
        (["--mask-preset", "eyes", "--steps", "-1"], "--steps must be >= 0, got -1"),
        (["--mask-preset", "eyes", "--log-every", "0"], "--log-every must be >= 1, got 0"),
        (["--mask-preset", "eyes", "--candidates", "0"], "--candidates must be >= 1, got 0"),
        (["--mask-preset", "eyes", "--track-every", "0"], "--track-every must be >= 1, got 0"),
        (["--mask-preset", "eyes", "--method", "brgm", "--preset", "paper"], "unknown preset 'paper' for method brgm"),
    ],
)
def test_bad_options_are_one_line_exit_2(weights: dict[str, str], face: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    result = invoke(*base_run(weights, tmp_path, str(face), *extra))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_output_or_profile_folder_that_is_a_file(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for flag in ("--out", "--profile"):
        out, extra = (afile, []) if flag == "--out" else (tmp_path / "out", ["--profile", str(afile)])
        result = invoke(*base_run(weights, out, str(face), "--mask-preset", "eyes", *extra))
        assert result.exit_code == 2 and f"{flag} {afile} is a file" in result.output, result.output
        assert "Traceback" not in result.output
    assert afile.read_text() == "keep me"


def test_profile_and_per_input_timings(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.png"
    second.write_bytes(face.read_bytes())
    prof = tmp_path / "prof"
    result = invoke(*base_run(weights, tmp_path / "out", str(face), str(second), "--mask-preset", "eyes", "--profile", prof, "--json"))
    assert result.exit_code == 0, result.output
    # 4 eager steps, fewer than the profiler's window of 5: what was recorded is written at the
    # end (a profiler left running crashed the interpreter on exit).
    assert (prof / "ops.txt").read_text().startswith("4 step(s) recorded")
    assert (prof / "trace.json").is_file()
    outcomes = json.loads(result.stdout)
    assert [o["status"] for o in outcomes] == ["done", "done"]
    for o in outcomes:
        report = json.loads((Path(o["folder"]) / "report.json").read_text())
        assert o["timings"] == report["timings"]
        seconds = report["timings"]["seconds"]
        # Each input's own batch (--batch-size 1), not the job so far: the phases fit in it.
        top_level = sum(seconds.get(k, 0.0) for k in ("setup", "candidates", "optimise", "finalise"))
        assert 0 < top_level <= report["batch_seconds"] + 1e-3, (seconds, report["batch_seconds"])
        assert "load" not in seconds and report["model_load_seconds"] > 0
        assert report["timings"]["peak_host_memory_bytes"] > 0


def test_restarts_keep_one_result_per_input(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    mirrored = tmp_path / "mirrored.png"
    Image.open(face).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    # Scored every 2 steps, as the frames are taken, so the kept iterate is one of the frames.
    args = ["--mask-preset", "eyes", "--batch-size", "2", "--restarts", "3", "--frames", "2", "--track-every", "2", "--json"]
    result = invoke(*base_run(weights, tmp_path / "out", str(face), str(mirrored), *args))
    assert result.exit_code == 0, result.output
    for outcome in json.loads(result.stdout):
        folder = Path(outcome["folder"])
        report = json.loads((folder / "report.json").read_text())
        restarts = report["restarts"]
        assert restarts["count"] == 3 and len(restarts["scores"]) == 3 and outcome["metrics"]["restart"] == restarts["kept"]
        assert len(report["history"]["total"]) == 3  # steps 0, 2, 4 of the kept restart only
        frames = sorted((folder / "frames").iterdir())
        assert [p.name for p in frames] == ["0000.png", "0001.png", "0002.png"]
        # The kept restart's frames: the one at its best step is its restored image.
        shown = np.asarray(Image.open(frames[outcome["metrics"]["best_step"] // 2])).astype(int)
        assert np.abs(shown - np.asarray(Image.open(folder / "restored.png")).astype(int)).max() <= 1
    bad = invoke(*base_run(weights, tmp_path / "x", str(face), "--mask-preset", "eyes", "--restarts", "0"))
    assert bad.exit_code == 2 and "--restarts must be >= 1, got 0" in bad.output


def test_samples_write_every_sample_and_their_spread(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    folders = []
    for name in ("a", "b"):  # twice with one seed: the same files
        result = invoke(*base_run(weights, tmp_path / name, str(face), "--mask-preset", "eyes", "--samples", "3"))
        assert result.exit_code == 0, result.output
        folders.append(tmp_path / name / "face")
    folder = folders[0]
    samples = np.stack([np.asarray(Image.open(folder / f"sample-{k}.png"), dtype=np.float64) / 255 for k in range(3)])  # [K, H, W, 3]
    std = np.load(folder / "uncertainty.npy")
    assert std.shape == (32, 32) and std.dtype == np.float32
    assert np.abs(std - np.sqrt(samples.var(axis=0, ddof=1).mean(axis=-1))).max() < 2 / 255  # the PNGs are rounded
    assert np.abs(np.asarray(Image.open(folder / "mean.png")) / 255 - samples.mean(axis=0)).max() < 2 / 255
    assert Image.open(folder / "uncertainty.png").width > 32
    report = json.loads((folder / "report.json").read_text())
    hole = 1 - Inpainting.from_preset("eyes", 32).mask[0, 0].numpy()
    assert np.isclose(report["uncertainty"]["mean_std_missing_region"], std[hole > 0].mean(), rtol=1e-5)
    assert report["uncertainty"]["samples"] == 3 and report["restarts"]["count"] == 3
    latents = np.load(folder / "latents.npz")
    assert latents["samples_w_plus"].shape == (3, 8, 32) and latents["samples_z"].shape == (3, 32) and latents["samples_step"].shape == (3,)
    for name in ("uncertainty.npy", "sample-2.png", "restored.png"):
        assert (folder / name).read_bytes() == (folders[1] / name).read_bytes(), name
    for extra, message in ((["--samples", "0"], "--samples must be >= 2, got 0"),
                           (["--samples", "2", "--restarts", "2"], "give --samples or --restarts, not both")):
        bad = invoke(*base_run(weights, tmp_path / "x", str(face), "--mask-preset", "eyes", *extra))
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output
        assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_summary_shows_optimise_time_and_peak_memory() -> None:
    from rich.console import Console

    from lbrgm_fast.cli import _summary_table
    from lbrgm_fast.job import InputOutcome

    done = InputOutcome(name="face", source="face.png", folder=Path("out/face"), metrics={"best_step": 40, "psnr": 21.5},
                        timings={"seconds": {"optimise": 12.34, "compile": 5.0}, "peak_host_memory_bytes": 3 * 2**29, "peak_device_memory_bytes": None})
    failed = InputOutcome(name="bad", source="bad.png", status="failed", message="not an image")
    console = Console(record=True, width=200)
    console.print(_summary_table([done, failed]))
    text = console.export_text()
    assert "12.3 (compile 5.0)" in text and "peak memory: host 1.50 GiB;" in text and "GPU" not in text
    assert "not an image" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shape", ""], "no shape given"),
        (["--shape", "ffhq512"], "unknown shape(s) ffhq512"),
        (["--modes", ""], "no mode given"),
        (["--modes", "eager-fp64"], "unknown mode"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--batch-sizes", "a"], "--batch-sizes"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--modes", "eager-fp32-graphs", "--device", "cpu"], "CUDA graphs"),
    ],
)
def test_bench_bad_options_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = invoke("bench", "--shape", "tiny32", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_every_run_option_reaches_run_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every `run` option but --quiet / --json (output), --align / --face (they choose the
    # photo layer around the job, align/photos.py) and --ray / --workers / --gpus-per-worker (the
    # cluster around it, lbrgm_fast/ray.py) reaches RunOptions under its own name, without a
    # hand-written copy of each: a new option needs only its parameter and its field.
    import inspect
    from dataclasses import fields

    from lbrgm_fast import cli
    from lbrgm_fast.job import RunOptions

    parameters = set(inspect.signature(cli.run).parameters) - {"quiet", "json_out", "align", "face", "ray", "workers", "gpus_per_worker"}
    assert parameters <= {f.name for f in fields(RunOptions)}
    seen: list = []
    monkeypatch.setattr("lbrgm_fast.job.run_job", lambda options, reporter: seen.append(options) or [])
    result = invoke("run", "x.png", "--mask-preset", "eyes", "--steps", "7", "--no-compile", "--batch-size", "3", "--quiet")
    assert result.exit_code == 0, result.output
    # The CLI keeps freed host memory by default, the library does not (RunOptions).
    assert seen == [RunOptions(inputs=["x.png"], mask_preset="eyes", steps=7, compile=False, batch_size=3, retain_host_memory=True)]


def test_run_ray_without_ray_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray is an optional extra: without it `run --ray` says how to get it; nothing else needs it.
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    monkeypatch.delitem(sys.modules, "lbrgm_fast.ray", raising=False)
    result = invoke("run", "x.png", "--mask-preset", "eyes", "--ray", "local")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert 'pip install "lbrgm-fast[ray]"' in result.output
    alone = invoke("run", "x.png", "--mask-preset", "eyes", "--workers", "2")
    assert alone.exit_code == 2 and "--workers and --gpus-per-worker are for --ray" in alone.output


def test_help_groups_run_options_and_shows_no_type_for_flags() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for panel in ("Task", "Method", "Early stopping", "Speed", "Input / output", "Cluster"):
        assert f"─ {panel} ─" in result.output
    assert "<bool>" not in result.output and "<int>" in result.output
    assert "<bool>" not in runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output


def test_mask_files_wrong_size_or_empty(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(small)
    result = invoke(*base_run(weights, tmp_path, str(face), "--mask", str(small)))
    assert result.exit_code == 2 and "16x16" in result.output
    uniform = tmp_path / "uniform.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(uniform)
    result = invoke(*base_run(weights, tmp_path, str(face), "--mask", str(uniform)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "uniform.png is uniform (every pixel 255), so no region is marked" in result.output


def test_images_of_other_modes_and_sizes(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(face))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "deep.png")
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    result = invoke(*base_run(weights, out, str(tmp_path / "*.png"), "--mask-preset", "bar", "--steps", "1", "--json"))
    assert result.exit_code == 0, result.output
    notes = {o["name"]: " ".join(o["notes"]) for o in json.loads(result.stdout)}
    assert "grayscale" in notes["gray"] and "alpha" in notes["rgba"] and "16-bit" in notes["deep"]
    assert "centre-cropped" in notes["wide"] and "resized" in notes["wide"]
    strict = invoke(*base_run(weights, tmp_path / "strict", str(tmp_path / "wide.png"), "--mask-preset", "bar", "--strict"))
    assert strict.exit_code == 2 and "not square" in strict.output


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 10])
def test_info_on_bad_checkpoints(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(content)
    result = invoke("info", bad)
    assert result.exit_code == 2 and "bad.pkl" in result.output and "Traceback" not in result.output


def test_info_and_convert(tmp_path: Path) -> None:
    result = invoke("info", PICKLE, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["format"] == "nvidia-pickle" and data["num_ws"] == 8 and data["channels"]["32"] == 16
    assert len(data["sha256"]) == 64
    out = tmp_path / "tiny.safetensors"
    assert invoke("convert", PICKLE, out).exit_code == 0
    converted = json.loads(invoke("info", out, "--json").stdout)
    assert converted["format"] == "lbrgm" and converted["parameters"] == data["parameters"]
    assert invoke("convert", PICKLE, out).exit_code == 2  # never overwrites


def test_missing_vgg_weights_say_where_to_put_them(face: Path, tmp_path: Path) -> None:
    result = invoke("run", "--checkpoint", PICKLE, "--vgg16", tmp_path / "nope.pth", "--mask-preset", "eyes", "--out", tmp_path, face)
    assert result.exit_code == 2 and "nope.pth" in result.output and "Traceback" not in result.output


def test_corrupt_vgg_weights_are_one_line_without_unsafe_advice(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "vgg16.pth"
    truncated.write_bytes(Path(weights["vgg16"]).read_bytes()[:5000])
    result = invoke("run", "--checkpoint", PICKLE, "--vgg16", truncated, "--mask-preset", "eyes", "--out", tmp_path, face)
    assert result.exit_code == 2 and "vgg16.pth is not a readable PyTorch state dict" in result.output
    assert "weights_only" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_runs_offline(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, steps=20)
    assert set(summary["methods"]) == {"lbrgm", "brgm", "none"}
    truth = np.asarray(Image.open(tmp_path / "ground_truth.png"), dtype=np.float64)
    observed = np.asarray(Image.open(tmp_path / "lbrgm" / "ground_truth" / "observation.png"), dtype=np.float64)
    for method, metrics in summary["methods"].items():
        restored = np.asarray(Image.open(tmp_path / method / "ground_truth" / "restored.png"), dtype=np.float64)
        # The reported PSNR is that of the saved image (up to its 8-bit rounding) ...
        assert metrics["psnr"] == pytest.approx(10 * np.log10(255**2 / np.mean((restored - truth) ** 2)), abs=0.2), method
        # ... and every method fills the missing half better than the observation's zeros do.
        missing = np.s_[:, 16:]
        assert np.mean((restored[missing] - truth[missing]) ** 2) < np.mean((observed[missing] - truth[missing]) ** 2), method
        assert 0 <= metrics["lpips_alex"] < 1, method
    assert (tmp_path / "summary.json").is_file()
    # ground truth | observation | L-BRGM | BRGM | no prior, 4x enlarged, each panel named above.
    comparison = np.asarray(Image.open(tmp_path / "comparison.png"))
    assert comparison.shape == (LABEL_BAND + 4 * 32, 5 * 4 * 32, 3)
    for panel in range(5):
        band = comparison[:LABEL_BAND, panel * 128 : (panel + 1) * 128]
        assert (band < 100).any() and (band == 255).mean() > 0.5, panel  # dark text on white


@pytest.mark.slow
def test_build_then_run_with_the_engine_plan(weights: dict[str, str], face: Path, tmp_path: Path) -> None:
    """The user's headline command: `lbrgm-fast run --engine NAME.plan input.png`."""
    plan = tmp_path / "tiny.plan"
    built = invoke("build", PICKLE, "-o", plan, "--vgg16", weights["vgg16"], "--alexnet", weights["alexnet"])
    assert built.exit_code == 0, built.output
    described = json.loads(invoke("info", plan, "--json").stdout)
    assert described["kind"] == "plan"
    assert invoke("build", PICKLE, "-o", plan, "--vgg16", weights["vgg16"]).exit_code == 2  # never overwrites
    runs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["run", "--engine", plan, "--forward-backend", backend, "--mask-preset", "eyes", "--steps", "3",
                "--candidates", "3", "--device", "cpu", "--no-compile", "--out", out, "--quiet", face]
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        runs[backend] = np.load(out / "face" / "latents.npz")["w_plus"]
        report = json.loads((out / "face" / "report.json").read_text())
        assert report["forward_engine"]["choice"]["generate"] == backend
    assert np.allclose(runs["torch"], runs["onnxruntime"], atol=1e-4)
    checkpoint_run = invoke(*base_run(weights, tmp_path / "ckpt", str(face), "--mask-preset", "eyes", "--steps", "3", "--candidates", "3"))
    assert checkpoint_run.exit_code == 0
    assert np.allclose(np.load(tmp_path / "ckpt" / "face" / "latents.npz")["w_plus"], runs["torch"], atol=1e-4)
    refused = invoke(*base_run(weights, tmp_path / "x", str(face), "--mask-preset", "eyes", "--forward-backend", "onnxruntime"))
    assert refused.exit_code == 2 and "--engine" in refused.output


def test_benign_torch_warnings_are_dropped_and_others_kept(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from lbrgm_fast.cli import BENIGN_TORCH_WARNINGS, silence_benign_torch_warnings

    silence_benign_torch_warnings()
    with caplog.at_level(logging.WARNING):
        for name, prefix in BENIGN_TORCH_WARNINGS.items():
            logging.getLogger(name).warning("%s, details", prefix)
            logging.getLogger(name).warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"] * len(BENIGN_TORCH_WARNINGS)


def test_progress_rate_is_the_steady_rate_after_compilation(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from lbrgm_fast.cli import RichReporter
    from lbrgm_fast.progress import ProgressReport

    # The first report arrives after a long compilation (t = 100 s), the next 20 steps later.
    times = [100.0, 110.0]
    monkeypatch.setattr("lbrgm_fast.cli.time.perf_counter", lambda: times.pop(0) if len(times) > 1 else times[0])
    reporter = RichReporter(quiet=False)
    reporter.batch_started(["face"], steps=20)
    for step in (0, 20):
        reporter.progress(ProgressReport(step=step, steps=20, terms={"total": [1.0], "pixel": [2.0]}, score=None, best_step=[step]))
    reporter.batch_finished()
    assert "face: step 20/20 loss 1 pix 2 2.00 steps/s" in capsys.readouterr().err


def test_cluster_progress_line(capsys: pytest.CaptureFixture) -> None:
    # `run --ray`: images finished, failed, the ETA at the job's rate so far and each worker's
    # images per hour from its busy time (here 3 of 8 finished in 60 s: 100 s left).
    from lbrgm_fast.cli import RichJobReporter
    from lbrgm_fast.progress import JobProgress, WorkerProgress

    workers = [WorkerProgress(0, 11, "a", images=2, busy_seconds=36.0), WorkerProgress(1, 12, "b", running=["x"])]
    RichJobReporter(quiet=False).update(JobProgress(total=8, done=2, failed=1, elapsed=60.0, workers=workers))
    assert "3/8 images, 1 failed, ETA 1.7 min | w0:200/h w1:-" in capsys.readouterr().err


def test_cluster_progress_bar_ends_with_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a terminal the bar is live (the cursor hidden); a job ending early (Ctrl-C, an error)
    # must still stop it and show the cursor again.
    import io

    from rich.console import Console

    from lbrgm_fast.cli import RichJobReporter
    from lbrgm_fast.progress import JobProgress, WorkerProgress

    terminal = io.StringIO()
    monkeypatch.setattr("lbrgm_fast.cli.stderr", Console(file=terminal, force_terminal=True))
    reporter = RichJobReporter(quiet=False)
    reporter.update(JobProgress(total=8, done=1, failed=0, elapsed=10.0, workers=[WorkerProgress(0, 11, "a")]))
    hide, show = "\x1b[?25l", "\x1b[?25h"
    assert hide in terminal.getvalue() and show not in terminal.getvalue()
    reporter.job_finished()
    assert terminal.getvalue().rindex(show) > terminal.getvalue().rindex(hide)



def test_messages_keep_brackets_in_names(weights: dict[str, str], tmp_path: Path) -> None:
    # rich reads [...] as markup: a file named like a tag must still be named in full.
    result = invoke(*base_run(weights, tmp_path, str(tmp_path / "face[1].png"), "--mask-preset", "eyes"))
    assert result.exit_code == 2
    assert f"failed: {tmp_path / 'face[1].png'}: no files match" in result.output  # a glob, as the shell's
