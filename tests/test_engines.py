"""Forward engines and backend selection: ONNX Runtime against the torch modules, the candidate
scoring's choice of z with every backend, `auto`, and the TensorRT / ONNX Runtime CUDA paths
(skipped where TensorRT, onnxruntime-gpu or a GPU is missing, with the reason)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from lbrgm_fast.build import tensorrt_engine_members
from lbrgm_fast.checkpoints import load_generator
from lbrgm_fast.errors import UserError
from lbrgm_fast.export.onnx_export import GraphSpec
from lbrgm_fast.export.tensorrt_build import BuildOptions, engine_key, profile_shapes
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Inpainting, SuperResolution
from lbrgm_fast.perceptual import VGG16Features
from lbrgm_fast.plan import Plan, read_plan
from lbrgm_fast.reconstruct import ReconstructionResult, Reconstructor
from lbrgm_fast.runtime.engines import ForwardEngine, TorchEngine
from lbrgm_fast.runtime.onnx_engine import OnnxRuntimeEngine
from lbrgm_fast.runtime.select import CHOICE_FILE, PhaseEngine, select_engine
from lbrgm_fast.runtime.tensorrt_engine import run_in_batches

from plans import TINY32_PICKLE, altered_plan, tiny32_plan
from reference import rel_error


TOLERANCE = 1e-4
NO_TENSORRT = "TensorRT is not installable on this project's machines"
NO_ORT_CUDA = "onnxruntime-gpu (CUDAExecutionProvider) is not installable on this project's machines"


class Notes:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def note(self, message: str) -> None:
        assert "\n" not in message
        self.messages.append(message)


@pytest.fixture(scope="session")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny32_plan(tmp_path_factory)


@pytest.fixture(scope="module")
def plan(plan_path: Path) -> Plan:
    return read_plan(plan_path)


@pytest.fixture(scope="module")
def torch_engine(plan: Plan) -> TorchEngine:
    return TorchEngine(plan.generator(), plan.perceptual(), plan.monitor())


@pytest.fixture(scope="module")
def ort_engine(plan: Plan) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine.from_plan(plan)


@pytest.fixture
def own_plan(plan_path: Path, tmp_path: Path) -> Plan:
    """A private copy of the plan, so that its cache folder starts empty."""
    copy = tmp_path / "copy.plan"
    copy.write_bytes(plan_path.read_bytes())
    return read_plan(copy)


def images(batch: int, side: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- ONNX Runtime on the CPU ------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_torch(torch_engine: TorchEngine, ort_engine: OnnxRuntimeEngine, batch: int) -> None:
    z = torch.randn(batch, 32, generator=torch.Generator().manual_seed(batch))
    generated = ort_engine.generate(z)
    assert generated.dtype == torch.float32 and generated.device.type == "cpu"
    assert rel_error(generated, torch_engine.generate(z)) < TOLERANCE
    for side in (32, 16, 8):  # inpainting, x2 and x4 super-resolution observations
        x = images(batch, side, side)
        for out, ref in zip(ort_engine.features(x), torch_engine.features(x), strict=True):
            assert rel_error(out, ref) < TOLERANCE
    x, y = images(batch, 32, 1), images(batch, 32, 2)
    assert rel_error(ort_engine.lpips(x, y), torch_engine.lpips(x, y)) < TOLERANCE


def test_onnxruntime_takes_non_contiguous_inputs(torch_engine: TorchEngine, ort_engine: OnnxRuntimeEngine) -> None:
    x = images(2, 32, 7).transpose(2, 3)  # a strided view: bound after a contiguous copy
    assert not x.is_contiguous()
    for out, ref in zip(ort_engine.features(x), torch_engine.features(x)):
        assert rel_error(out, ref) < TOLERANCE


def test_onnxruntime_rejects_wrong_shapes(ort_engine: OnnxRuntimeEngine) -> None:
    with pytest.raises(ValueError, match="graph expects"):
        ort_engine.generate(torch.randn(2, 31))
    with pytest.raises(ValueError, match="disagree on dimension 'batch'"):
        ort_engine.lpips(images(2, 32, 0), images(3, 32, 0))


# -- the same restoration with every backend -----------------------------------------------------------


def restore(
    engine: ForwardEngine | None,
    generator: Generator,
    perceptual: VGG16Features,
    operator: Inpainting | SuperResolution,
    truth: torch.Tensor,
    steps: int = 0,
) -> ReconstructionResult:
    rec = Reconstructor(generator, perceptual, steps=steps, candidates=16, candidate_batch=8, log_every=1, early_stop="none", engine=engine)
    return rec.run(operator(truth), operator, seed=5)


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    G = load_generator(TINY32_PICKLE)
    with torch.no_grad():
        return ((G(torch.randn(1, 32, generator=torch.Generator().manual_seed(11))) + 1) / 2).clamp(0, 1)


@pytest.fixture(scope="module")
def auto_engine(plan: Plan, torch_engine: TorchEngine) -> PhaseEngine:
    selection = select_engine(plan, "auto", "cpu", batch=2, repeats=1, use_cache=False, torch_engine=torch_engine)
    assert isinstance(selection.engine, PhaseEngine)
    return selection.engine


@pytest.mark.parametrize("operator", [Inpainting.from_preset("eyes", 32), SuperResolution(4)], ids=["inpaint", "superres-x4"])
def test_chosen_z_is_the_same_with_every_backend(
    torch_engine: TorchEngine,
    ort_engine: OnnxRuntimeEngine,
    auto_engine: PhaseEngine,
    truth: torch.Tensor,
    operator: Inpainting | SuperResolution,
) -> None:
    G, phi = torch_engine.generator, torch_engine.perceptual
    chosen = {e.name: restore(e, G, phi, operator, truth).initial_z for e in (torch_engine, ort_engine, auto_engine)}
    reference = chosen.pop("torch")
    for name, z in chosen.items():
        assert torch.equal(z, reference), name


def test_engine_plan_restores_like_the_checkpoint(plan: Plan, ort_engine: OnnxRuntimeEngine, truth: torch.Tensor) -> None:
    """`run --engine` (plan modules, ONNX Runtime scoring) == `run --checkpoint` (torch), same seed."""
    operator = Inpainting.from_preset("left-half", 32)
    phi = plan.perceptual()
    from_checkpoint = restore(None, load_generator(TINY32_PICKLE), phi, operator, truth, steps=2)
    from_plan = restore(ort_engine, plan.generator(), phi, operator, truth, steps=2)
    assert torch.equal(from_plan.initial_z, from_checkpoint.initial_z)
    assert torch.equal(from_plan.images, from_checkpoint.images)


# -- backend selection ----------------------------------------------------------------------------------


def test_auto_measures_picks_and_caches(own_plan: Plan) -> None:
    notes = Notes()
    first = select_engine(own_plan, "auto", "cpu", notes, batch=2, repeats=1)
    assert isinstance(first.engine, PhaseEngine) and not first.cached
    assert set(first.choice) == {"generate", "features", "lpips"}
    for phase, backend in first.choice.items():
        measured = first.seconds[phase]
        assert set(measured) == {"torch", "onnxruntime"} and backend == min(measured, key=measured.get)
    assert "tensorrt" in first.unavailable
    assert notes.messages == [first.reason] and "measured now" in first.reason
    for phase, backend in first.choice.items():
        assert f"{phase}: {backend}" in first.reason

    stored = json.loads((own_plan.cache_dir / CHOICE_FILE).read_text())
    (key, entry), = stored.items()
    assert key.startswith(own_plan.content_sha256) and "threads=" in key
    assert entry["choice"] == first.choice and entry["reason"] == first.reason

    second = select_engine(own_plan, "auto", "cpu", notes, batch=2, repeats=1)
    assert second.cached and second.choice == first.choice and second.seconds == first.seconds
    assert "measured earlier" in notes.messages[-1]
    x = images(2, 32, 0)
    assert all(torch.equal(a, b) for a, b in zip(first.engine.features(x), second.engine.features(x)))


def test_auto_leaves_lpips_out_when_the_run_does_not_monitor(own_plan: Plan) -> None:
    # A run without ground truth has no monitor: LPIPS must be neither measured nor chosen,
    # even though the plan holds one (torch, given no monitor, cannot run it).
    G, vgg = own_plan.generator(), own_plan.perceptual()
    notes = Notes()
    selection = select_engine(own_plan, "auto", "cpu", notes, torch_engine=TorchEngine(G, vgg, None), batch=2, lpips=False, repeats=1)
    assert set(selection.choice) == {"generate", "features"}
    assert notes.messages == [selection.reason] and "lpips" not in selection.reason
    # A monitoring run keeps its own cached choice beside it, not in its place: the run without
    # LPIPS still finds its measurement afterwards.
    select_engine(own_plan, "auto", "cpu", notes, batch=2, repeats=1)
    again = select_engine(own_plan, "auto", "cpu", notes, torch_engine=TorchEngine(G, vgg, None), batch=2, lpips=False, repeats=1)
    assert again.cached and again.choice == selection.choice


def test_auto_survives_a_damaged_or_unwritable_cache(own_plan: Plan) -> None:
    own_plan.cache_dir.mkdir()
    (own_plan.cache_dir / CHOICE_FILE).write_text("{ damaged")
    selection = select_engine(own_plan, "auto", "cpu", batch=1, repeats=1)
    assert not selection.cached  # measured again, and the file repaired
    assert json.loads((own_plan.cache_dir / CHOICE_FILE).read_text())

    (own_plan.cache_dir / CHOICE_FILE).unlink()
    own_plan.cache_dir.rmdir()
    own_plan.cache_dir.write_text("a file where the cache folder should be")
    notes = Notes()
    selection = select_engine(own_plan, "auto", "cpu", notes, batch=1, repeats=1)
    assert any(m.startswith("could not cache the backend choice") for m in notes.messages)


def test_explicit_backends(plan: Plan, torch_engine: TorchEngine) -> None:
    assert select_engine(plan, "torch", "cpu", torch_engine=torch_engine).engine is torch_engine
    selection = select_engine(plan, "onnxruntime", "cpu")
    assert isinstance(selection.engine, OnnxRuntimeEngine) and "requested" in selection.reason
    with pytest.raises(UserError, match=r"^--forward-backend tensorrt: TensorRT needs a CUDA device$"):
        select_engine(plan, "tensorrt", "cpu")
    with pytest.raises(UserError, match="unknown forward backend 'tflite'"):
        select_engine(plan, "tflite", "cpu")


def test_foreign_tensorrt_engines_are_skipped_with_a_note(plan_path: Path, tmp_path: Path) -> None:
    """A plan built on a GPU machine runs here: its engines are skipped in one line."""
    key = engine_key("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0")
    files = {name: f"tensorrt/{key}/{name}.engine" for name in ("mapping", "synthesis", "features", "lpips")}
    entry = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.3.0", "precision": "fp16", "max_batch": 16, "engines": files}
    path = altered_plan(plan_path, tmp_path / "gpu.plan", {"tensorrt": {key: entry}}, {f: b"not for this machine" for f in files.values()})
    plan = read_plan(path)
    assert plan.describe()["tensorrt_engines"] == [key]
    notes = Notes()
    selection = select_engine(plan, "auto", "cpu", notes, batch=1, repeats=1)
    assert notes.messages[0] == f"auto: not using the plan's TensorRT engines ({key}): TensorRT needs a CUDA device"
    assert "tensorrt" not in selection.choice.values()


def test_build_without_tensorrt_notes_and_goes_on(plan: Plan) -> None:
    notes = Notes()
    members: dict[str, bytes] = {}
    entries = tensorrt_engine_members({"mapping": plan.onnx("mapping")}, "fp16", 16, 32, members, notes)
    assert entries == {} and members == {}
    assert len(notes.messages) == 1 and notes.messages[0].startswith("no TensorRT engines in the plan: ")


# -- TensorRT build settings (plain Python) -----------------------------------------------------------


def test_engine_key() -> None:
    assert engine_key("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0") == "nvidia-h100-80gb-hbm3-sm90-trt10.3.0"
    assert engine_key("NVIDIA GeForce RTX 4090", (8, 9), "10.0.1") == "nvidia-geforce-rtx-4090-sm89-trt10.0.1"


def test_profile_shapes(plan: Plan) -> None:
    options = BuildOptions(precision="fp16", max_batch=16, opt_batch=8, resolution=1024)
    features = GraphSpec(**{k: v for k, v in plan.manifest["graphs"]["features"].items() if k in ("inputs", "outputs")})
    assert profile_shapes(features, options, "features") == {"images": ([1, 3, 8, 8], [8, 3, 1024, 1024], [16, 3, 1024, 1024])}
    lpips = GraphSpec(**{k: v for k, v in plan.manifest["graphs"]["lpips"].items() if k in ("inputs", "outputs")})
    assert profile_shapes(lpips, options, "lpips")["x"] == ([1, 3, 32, 32], [1, 3, 32, 32], [16, 3, 32, 32])
    with pytest.raises(ValueError, match="unknown dynamic dimension 'time'"):
        profile_shapes(GraphSpec({"x": ["time", 3]}, {}), options, "mapping")


# -- GPU paths (not executable on this project's machines) ---------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason=NO_ORT_CUDA)
def test_onnxruntime_cuda_iobinding_matches_torch(plan: Plan) -> None:
    device = torch.device("cuda")
    reference = TorchEngine(plan.generator().to(device), plan.perceptual().to(device), plan.monitor().to(device))
    engine = OnnxRuntimeEngine.from_plan(plan, device)
    z = torch.randn(4, 32, device=device)
    out = engine.generate(z)
    assert out.device == z.device
    assert rel_error(out, reference.generate(z)) < TOLERANCE
    x = images(4, 16, 0).to(device)
    for a, b in zip(engine.features(x), reference.features(x)):
        assert a.is_cuda and rel_error(a, b) < TOLERANCE


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason=NO_TENSORRT)
def test_tensorrt_engine_matches_torch(plan_path: Path, tmp_path: Path) -> None:
    from lbrgm_fast.runtime.tensorrt_engine import TensorRTEngine

    copy = tmp_path / "trt.plan"
    copy.write_bytes(plan_path.read_bytes())
    plan = read_plan(copy)  # fp32 engines: the plan was built with --precision fp32
    notes = Notes()
    engine = TensorRTEngine.from_plan(plan, "cuda", notes.note)
    assert "has no TensorRT engines for" in notes.messages[0]
    device = torch.device("cuda")
    reference = TorchEngine(plan.generator().to(device), plan.perceptual().to(device), plan.monitor().to(device))
    z = torch.randn(3, 32, device=device)
    assert rel_error(engine.generate(z), reference.generate(z)) < 1e-3  # TF32 convolutions
    x = images(3, 16, 0).to(device)
    for a, b in zip(engine.features(x), reference.features(x)):
        assert rel_error(a, b) < 1e-3
    # Built once, then reused from the cache next to the plan.
    notes = Notes()
    TensorRTEngine.from_plan(read_plan(copy), "cuda", notes.note)
    assert not any("building" in m for m in notes.messages)


def test_tensorrt_graphs_run_batches_beyond_their_profile_in_slices() -> None:
    # What a TensorRT engine does with a job batch above the plan's max_batch (the engine itself
    # needs TensorRT): slices of at most max_batch, outputs concatenated in order.
    calls: list[int] = []

    def engine(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        assert x.shape[0] <= 4
        calls.append(x.shape[0])
        return [(x - y).square().sum(dim=1), x.mean(dim=1, keepdim=True)]

    x, y = torch.randn(10, 3), torch.randn(10, 3)
    distance, mean = run_in_batches(engine, (x, y), max_batch=4)
    assert calls == [4, 4, 2]
    assert torch.equal(distance, (x - y).square().sum(dim=1)) and torch.equal(mean, x.mean(dim=1, keepdim=True))
    calls.clear()
    run_in_batches(engine, (x[:4], y[:4]), max_batch=4)
    assert calls == [4]
