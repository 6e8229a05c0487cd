"""`lbrgm-fast eval`: metrics against independent references, summaries, resume, failures, figures.

Restorations run on the tiny32 fixture with φ at 32 px and a few steps."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from lbrgm_fast import evaluate as ev
from lbrgm_fast.cli import app
from lbrgm_fast.errors import UserError
from lbrgm_fast.loading import Models
from lbrgm_fast.metrics import ImageMetrics
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Inpainting
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.plots import LABEL_BAND

from torchvision_weights import lpips_reference

STEPS = dict(steps=3, candidates=2)


@pytest.fixture(scope="module")
def nets() -> tuple[VGG16Features, LpipsAlex]:
    return VGG16Features.random(0, resolution=32), LpipsAlex.random(0)


def test_metrics_equal_independent_references(nets) -> None:
    """LPIPS = the lpips package on the same weights; SSIM = scikit-image's; PSNR and MSE
    closed form; the hole's metrics see only the hole."""
    vgg, alex = nets
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 32, 32, generator=g) * 0.6 + 0.2
    x = (truth + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    metrics = ImageMetrics(alex, vgg, 32)
    got = metrics(x, truth)
    ref_alex = lpips_reference("alex", alex.lpips.net)
    ref_vgg = lpips_reference("vgg", vgg.layers)
    with torch.no_grad():
        assert torch.allclose(got["lpips_alex"].float(), ref_alex(x * 2 - 1, truth * 2 - 1).flatten(), rtol=1e-4)
        assert torch.allclose(got["lpips_vgg"].float(), ref_vgg(x * 2 - 1, truth * 2 - 1).flatten(), rtol=1e-4)
    for i in range(2):
        a, b = x[i].permute(1, 2, 0).double().numpy(), truth[i].permute(1, 2, 0).double().numpy()
        ssim = structural_similarity(a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert got["ssim"][i].item() == pytest.approx(ssim, abs=1e-6)
        mse = ((a - b) ** 2).mean()
        assert got["mse"][i].item() == pytest.approx(mse, rel=1e-9)
        assert got["psnr"][i].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    # An error of exactly 0.1 inside the eyes' hole and none outside: the hole's MSE is 0.01
    # (PSNR 20 dB), the whole image's 0.01 × the hole's share.
    op = Inpainting.from_preset("eyes", 32)
    missing = 1 - op.mask
    shifted = truth + 0.1 * missing
    hole = metrics(shifted, truth, missing)
    assert torch.allclose(hole["hole_mse"], torch.full((2,), 0.01, dtype=torch.float64))
    assert torch.allclose(hole["hole_psnr"], torch.full((2,), 20.0, dtype=torch.float64))
    assert torch.allclose(hole["mse"], 0.01 * missing.mean().double().expand(2))
    assert (hole["hole_ssim"] < hole["ssim"]).all()  # the hole holds all of the damage


def row(image: str, method: str, lpips_alex: float, ssim: float) -> dict:
    return {"image": image, "task": "inpaint:eyes", "method": method, "status": "done", "lpips_alex": lpips_alex, "ssim": ssim,
            "psnr": 20.0, "mse": 0.01, "lpips_vgg": 0.5, "hole_psnr": None}


def test_summary_counts_wins_and_means_on_a_hand_made_table() -> None:
    rows = [
        row("a", "lbrgm", 0.2, 0.7), row("a", "brgm", 0.3, 0.8),
        row("b", "lbrgm", 0.4, 0.6), row("b", "brgm", 0.4, 0.5),
        row("c", "lbrgm", 0.1, 0.9),  # brgm failed on c: c counts for neither
        {"image": "c", "task": "inpaint:eyes", "method": "brgm", "status": "failed", "message": "x"},
    ]
    s = ev.summarise(rows)["inpaint:eyes"]
    assert s["lbrgm"]["images"] == s["brgm"]["images"] == 2
    assert (s["lbrgm"]["wins"]["lpips_alex"], s["brgm"]["wins"]["lpips_alex"]) == (2, 1)  # b is a tie: both win
    assert (s["lbrgm"]["wins"]["ssim"], s["brgm"]["wins"]["ssim"]) == (1, 1)  # higher is better
    assert s["lbrgm"]["mean"]["lpips_alex"] == pytest.approx(0.3) and s["lbrgm"]["std"]["lpips_alex"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert s["brgm"]["mean"]["ssim"] == pytest.approx(0.65)
    assert "hole_psnr" not in s["lbrgm"]["mean"]
    text = ev.summary_markdown(ev.summarise(rows))
    assert "## inpaint:eyes" in text and "| lbrgm | 2 | " in text and "2 · 0.3 ± 0.14" in text


def test_time_to_quality_averages_curves_on_a_hand_made_table() -> None:
    """Means of the oracle curves over the images every method finished, and the first logged
    step within 2 % of the last mean."""
    def with_curve(image: str, method: str, lpips: list) -> dict:
        return {**row(image, method, lpips[-1], 0.5), "curve": {"step": [0, 10, 20, 30], "seconds": [1.0, 2.0, 3.0, 4.0], "lpips_alex": lpips}}

    rows = [
        with_curve("a", "lbrgm", [0.5, 0.3, 0.2, 0.2]), with_curve("b", "lbrgm", [0.7, 0.5, 0.206, 0.2]),
        with_curve("a", "none", [None, 0.4, 0.3, 0.1]), with_curve("b", "none", [0.6, 0.4, 0.3, 0.1]),
        with_curve("c", "lbrgm", [0.0, 0.0, 0.0, 0.0]),  # none has no c: c counts for neither
    ]
    curves = ev.time_to_quality(rows)["inpaint:eyes"]
    assert curves["lbrgm"]["images"] == 2 and curves["lbrgm"]["lpips_alex"] == pytest.approx([0.6, 0.4, 0.203, 0.2])
    assert curves["lbrgm"]["converged_step"] == 20 and curves["lbrgm"]["converged_seconds"] == 3.0  # 0.203 <= 0.2 · 1.02 < 0.4
    assert curves["none"]["lpips_alex"] == pytest.approx([0.6, 0.4, 0.3, 0.1]) and curves["none"]["converged_step"] == 30  # nan skipped
    text = ev.summary_markdown(ev.summarise(rows), ev.time_to_quality(rows))
    assert "| lbrgm | 0.6 | 0.6 | 0.4 | 0.2 | 20 | 3 |" in text


def test_time_to_quality_holds_a_curve_that_stopped_early() -> None:
    """A run whose every image went non-finite stops logging: its curve is shorter, held at its
    last values on the task's longer steps (closed form), whichever method logged first; a
    method whose every image never had a finite LPIPS has no settled step."""
    def with_curve(image: str, method: str, steps: list[int], lpips: list) -> dict:
        return {**row(image, method, 0.2, 0.5), "curve": {"step": steps, "seconds": [1.0 + s / 10 for s in steps], "lpips_alex": lpips}}

    rows = [
        with_curve("a", "lbrgm", [0, 10], [0.5, 0.3]), with_curve("b", "lbrgm", [0, 10, 20], [0.7, 0.5, 0.4]),
        with_curve("a", "none", [0, 10, 20], [None, None, None]), with_curve("b", "none", [0, 10], [None, None]),
    ]
    curves = ev.time_to_quality(rows)["inpaint:eyes"]
    assert curves["lbrgm"]["step"] == [0, 10, 20] and curves["lbrgm"]["images"] == 2
    assert curves["lbrgm"]["lpips_alex"] == pytest.approx([0.6, 0.4, 0.35]) and curves["lbrgm"]["seconds"] == pytest.approx([1.0, 2.0, 2.5])
    assert curves["none"]["converged_step"] is None and curves["none"]["lpips_alex"] == [None, None, None]
    assert "| none | – | – | – | – | – | – |" in ev.summary_markdown(ev.summarise(rows), ev.time_to_quality(rows))


def test_method_presets_in_the_grid() -> None:
    """`method:preset` names another preset of the method; the paper protocols compare with the
    L-BRGM paper's copy of BRGM."""
    assert ev.resolve_grid("quick", None, ["lbrgm:paper", "brgm:lbrgm-paper"], 32)[1] == ["lbrgm:paper", "brgm:lbrgm-paper"]
    assert ev.PROTOCOLS["paper1024"].methods == ev.PROTOCOLS["paper256"].methods == ("lbrgm", "brgm:lbrgm-paper")
    with pytest.raises(UserError, match="unknown preset 'authors' for method brgm"):
        ev.resolve_grid("quick", None, ["brgm:authors"], 32)
    with pytest.raises(UserError, match="unknown method 'l-brgm'"):
        ev.resolve_grid("quick", None, ["l-brgm"], 32)


def test_eval_resumes_without_recomputing_finished_cells(tiny32: Generator, nets, tmp_path: Path, monkeypatch) -> None:
    vgg, alex = nets
    targets = ev.in_range_targets(tiny32, 2, seed=5)
    run = lambda ts: ev.evaluate(tiny32, vgg, alex, ts, ["inpaint:eyes", "superres:4"], ["lbrgm", "none"], tmp_path, **STEPS)
    first = run(targets[:1])  # as if interrupted after the first image
    cell = tmp_path / "cells" / "inpaint-eyes" / "lbrgm" / "in-range-0000.json"
    stored = cell.read_bytes()
    restored = []
    original = ev.Reconstructor.run
    monkeypatch.setattr(ev.Reconstructor, "run", lambda self, obs, *a, **k: restored.append(obs.shape[0]) or original(self, obs, *a, **k))
    rows = run(targets)
    assert restored == [1, 1, 1, 1]  # only the second image, once per task and method
    assert cell.read_bytes() == stored and [r for r in rows if r["image"] == "in-range-0000"] == first
    assert len(rows) == 8 and all(r["status"] == "done" and 0 <= r["best_step"] <= 3 for r in rows)
    assert all(math.isfinite(r["psnr"]) for r in rows)  # no start is a ground truth (seeds kept apart)
    assert rows[0]["hole_lpips_alex"] is not None and [r for r in rows if r["task"] == "superres:4"][0].get("hole_mse") is None
    summary, curves = ev.write_results(rows, tmp_path)
    assert summary["inpaint:eyes"]["lbrgm"]["images"] == 2
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header == list(ev.CSV_FIELDS) and len((tmp_path / "results.csv").read_text().splitlines()) == 9
    for r in rows:  # the oracle so far at the logged steps (0 and the last), the seconds spent by then
        curve = r["curve"]
        assert curve["step"] == [0, 3] and curve["lpips_alex"][1] <= curve["lpips_alex"][0] and 0 < curve["seconds"][0] < curve["seconds"][1]
    (figure,) = [p for p in ev.write_figures(rows, targets, tmp_path, curves) if p.name.startswith("figure-") and "eyes" in p.name]
    with Image.open(figure) as img:  # ground truth | observation | lbrgm | none, 32 px panels enlarged 4x
        assert img.size == (4 * 128, 2 * 128 + LABEL_BAND)
    assert (tmp_path / "time-to-quality-inpaint-eyes.png").is_file() and "Time to quality" in (tmp_path / "summary.md").read_text()


def test_cli_eval_one_line_per_bad_image_and_exit_2(tiny32: Generator, nets, tmp_path: Path, monkeypatch) -> None:
    vgg, alex = nets
    folder = tmp_path / "clean"
    folder.mkdir()
    for t in ev.in_range_targets(tiny32, 2, seed=1):
        Image.fromarray((t.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{t.name}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    monkeypatch.setattr("lbrgm_fast.loading.load_models", lambda *a, **k: Models(tiny32, vgg, alex, source={}))
    args = ["eval", "--checkpoint", "x.pkl", "--images", str(folder), "--tasks", "inpaint:right-half", "--methods", "lbrgm,brgm:lbrgm-paper",
            "--steps", "2", "--candidates", "2", "--device", "cpu", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert sum("broken" in line for line in result.output.splitlines()) == 1 and "Traceback" not in result.output
    lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 2 and sum("failed" in line for line in lines) == 2
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inpaint:right-half"]["lbrgm"]["images"] == summary["inpaint:right-half"]["brgm:lbrgm-paper"]["images"] == 2
    assert len(list((tmp_path / "out" / "cells" / "inpaint-right-half" / "brgm-lbrgm-paper").glob("*.json"))) == 2
    with Image.open(tmp_path / "out" / "figure-inpaint-right-half.png") as img:
        assert img.size[0] == 4 * 128  # one column per method after ground truth and observation
    bad = CliRunner().invoke(app, ["eval", "--checkpoint", "x.pkl", "--in-range", "2", "--protocol", "paper1024", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "1024 px" in bad.output and "Traceback" not in bad.output
    monkeypatch.setattr("lbrgm_fast.loading.load_models", lambda *a, **k: pytest.fail("loaded models for a bad --methods"))
    bad = CliRunner().invoke(app, ["eval", "--checkpoint", "x.pkl", "--in-range", "2", "--methods", "brgm:authors", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "unknown preset 'authors' for method brgm" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(app, ["eval", "--checkpoint", "x.pkl", "--in-range", "2", "--protocol", "paper", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "unknown protocol 'paper'; choose one of paper1024, paper256, quick" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(app, ["eval", "--checkpoint", "x.pkl", "--in-range", "2", "--precision", "fp8", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "unknown precision 'fp8'" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize(("task", "message"), [
    ("denoise:3", "unknown task 'denoise:3'; write inpaint:<mask preset> or superres:<factor>"),
    ("superres:x", "unknown task 'superres:x'; write inpaint:<mask preset> or superres:<factor>"),
    ("superres:64", "super-resolution factor 64 does not divide the resolution 32"),
    ("inpaint:nose", "unknown mask preset 'nose'; valid names: right-half"),
])
def test_bad_tasks_are_user_errors(task: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        ev.resolve_grid("quick", [task], None, 32)


def test_eval_refuses_to_mix_cells_made_with_other_settings(tiny32: Generator, nets, tmp_path: Path) -> None:
    vgg, alex = nets
    targets = ev.in_range_targets(tiny32, 1, seed=5)
    ev.evaluate(tiny32, vgg, alex, targets, ["inpaint:eyes"], ["none"], tmp_path, **STEPS)
    recorded = json.loads((tmp_path / "eval.json").read_text())
    assert recorded["steps"] == STEPS["steps"] and len(recorded["generator_sha256"]) == 64
    with pytest.raises(UserError, match=r"holds cells made with other settings \(steps\)"):
        ev.evaluate(tiny32, vgg, alex, targets, ["inpaint:eyes"], ["none"], tmp_path, **{**STEPS, "steps": STEPS["steps"] + 1})
    ev.evaluate(tiny32, vgg, alex, targets, ["inpaint:eyes"], ["none"], tmp_path, **STEPS)  # the same settings go on
