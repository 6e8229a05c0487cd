"""A plan from a stranger reads nothing and runs nothing outside itself (issue 20).

Every hostile plan here is made from a real plan (the tiny32 fixture's), changed the way an
attacker would (a member rewritten, its checksum in the manifest updated, the zip written
again) and must be refused as one PlanError line naming the file, before anything in it is
loaded, opened or written. docs/plan-format.md, "Trust", lists the rules.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

import lbrgm_fast.export.tensorrt_build as tensorrt_build
from lbrgm_fast import plan_checks
from lbrgm_fast.errors import PlanError
from lbrgm_fast.plan import GRAPHS, MANIFEST, read_plan, write_plan
from lbrgm_fast.runtime.onnx_engine import OnnxRuntimeEngine, _guarded_options
from lbrgm_fast.runtime.tensorrt_engine import TensorRTEngine

from plans import altered_plan, expect_plan_error, plan_contents, rewrite_zip, tiny32_plan

GRAPH = "onnx/lpips.onnx"
TIMEOUT = 180  # seconds for a CLI call: importing torch on a busy 2-core machine is slow


@pytest.fixture(scope="session")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny32_plan(tmp_path_factory)


# -- the graphs ---------------------------------------------------------------------------------


def with_graph(plan_path: Path, target: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    """The plan with its lpips graph edited and the manifest's checksum of it updated."""
    manifest, members = plan_contents(plan_path)
    model = onnx.load_model_from_string(members[GRAPH])
    edit(model)
    members[GRAPH] = model.SerializeToString()
    return write_plan(target, manifest, members)


def point_at_external_data(location: str) -> Callable[[onnx.ModelProto], None]:
    """The attack of issue 20: the graph's largest weight read from `location` instead."""
    def edit(model: onnx.ModelProto) -> None:
        tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        length = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in {"location": location, "offset": "0", "length": str(length)}.items():
            tensor.external_data.add(key=key, value=value)
    return edit


def make_fifo_plan(plan_path: Path, folder: Path, escaping: bool = True) -> Path:
    """The issue's hostile plan, its external data a FIFO (opening it would block forever) at
    folder/x/secret.bin, named by a path that climbs to the root and down again (the issue's)
    or by one relative to the working directory (`folder`)."""
    fifo = folder / "x" / "secret.bin"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    location = "../" * 32 + str(fifo).lstrip("/") if escaping else "x/secret.bin"
    return with_graph(plan_path, folder / "evil.plan", point_at_external_data(location))


@pytest.fixture
def fifo_plan(plan_path: Path, tmp_path: Path) -> Path:
    return make_fifo_plan(plan_path, tmp_path)


def finishes(call: Callable[[], object], seconds: float = 60) -> BaseException | None:
    """The exception `call` raises, asserting that it returns within `seconds` (a call that
    opens a FIFO blocks until a writer comes, which never happens here)."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call blocked: it opened the FIFO the graph points at"
    return outcome[0] if outcome else None


@pytest.mark.parametrize("escaping", [True, False], ids=["climbing-path", "working-dir-path"])
def test_external_data_is_refused_without_opening_it(plan_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, escaping: bool) -> None:
    fifo_plan = make_fifo_plan(plan_path, tmp_path, escaping)
    monkeypatch.chdir(tmp_path)
    error = finishes(lambda: read_plan(fifo_plan))
    assert isinstance(error, PlanError), error
    message = str(error)
    assert "\n" not in message and str(fifo_plan) in message
    assert f"member {GRAPH} is refused" in message and "refers to external data" in message and "secret.bin" in message
    assert not fifo_plan.with_name("evil.plan.cache").exists()


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """`lbrgm-fast ARGS` in a fresh process, killed (and the test failed) if it hangs."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cwd / "inductor")}
    command = [sys.executable, "-c", "from lbrgm_fast.cli import main; main()", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def test_cli_info_and_run_refuse_the_issue_plan(fifo_plan: Path, tmp_path: Path) -> None:
    """The issue's reproduction: `info` called the plan valid and `run --engine ...
    --forward-backend onnxruntime` finished `done` after opening the file. Both now exit 2
    with one line on stderr, open nothing and write nothing."""
    from PIL import Image

    image = tmp_path / "face.png"
    Image.new("RGB", (32, 32), (128, 100, 90)).save(image)
    out = tmp_path / "out"
    calls = {
        "info": ["info", fifo_plan],
        "run": ["run", "--engine", fifo_plan, "--forward-backend", "onnxruntime", "--device", "cpu", "--steps", "2",
                "--candidates", "1", "--no-compile", "--mask-preset", "right-half", "--out", out, "--quiet", image],
    }
    for name, args in calls.items():
        result = cli(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: cannot use plan"), (name, result.stderr)
        assert "refers to external data" in lines[0] and "Traceback" not in result.stderr, (name, lines)
    assert not out.exists() and not fifo_plan.with_name("evil.plan.cache").exists()


def add_opset(domain: str) -> Callable[[onnx.ModelProto], None]:
    return lambda model: model.opset_import.append(helper.make_opsetid(domain, 1))


def set_first_node(**fields: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        for key, value in fields.items():
            setattr(model.graph.node[0], key, value)
    return edit


def add_function(model: onnx.ModelProto) -> None:
    model.functions.append(helper.make_function("lbrgm.evil", "Payload", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
                                                [helper.make_opsetid("", 17)]))


def add_subgraph(model: onnx.ModelProto) -> None:
    branch = helper.make_graph([], "branch", [], [])
    model.graph.node[0].attribute.append(helper.make_attribute("then_branch", branch))


def add_external_constant(model: onnx.ModelProto) -> None:
    """External data in a Constant node's value rather than in an initializer."""
    value = helper.make_tensor("c", onnx.TensorProto.FLOAT, [1], [0.0])
    value.ClearField("float_data")
    value.data_location = onnx.TensorProto.EXTERNAL
    value.external_data.add(key="location", value="weights.bin")
    model.graph.node.append(helper.make_node("Constant", [], ["unused_constant"], value=value))


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (point_at_external_data("weights.bin"), "refers to external data ('weights.bin')"),
        (add_external_constant, "refers to external data ('weights.bin')"),
        (add_opset("com.microsoft"), "imports the operator domain(s) 'com.microsoft'"),
        (set_first_node(domain="com.microsoft", op_type="EPContext"), "(com.microsoft::EPContext) is not a standard ONNX operator"),
        (set_first_node(op_type="RunThis"), "(ai.onnx::RunThis) is not a standard ONNX operator"),
        (add_function, "local functions"),
        (add_subgraph, "holds a subgraph"),
    ],
    ids=["external-initializer", "external-constant", "custom-domain", "ep-context-node", "unknown-operator", "function", "subgraph"],
)
def test_graphs_outside_what_the_exporter_emits_are_refused(plan_path: Path, tmp_path: Path, edit: Callable, fragment: str) -> None:
    path = with_graph(plan_path, tmp_path / "evil.plan", edit)
    expect_plan_error(path, f"member {GRAPH} is refused", fragment)


def test_a_graph_that_is_no_onnx_is_refused(plan_path: Path, tmp_path: Path) -> None:
    manifest, members = plan_contents(plan_path)
    members[GRAPH] = b"\xff" * 64
    expect_plan_error(write_plan(tmp_path / "evil.plan", manifest, members), "not a valid ONNX model")


def test_exported_graphs_pass_the_checks(plan_path: Path) -> None:
    """What the exporter writes is what the checks allow (they would refuse every plan else)."""
    with zipfile.ZipFile(plan_path) as archive:
        for name in GRAPHS:
            assert plan_checks.graph_problem(archive.read(f"onnx/{name}.onnx")) is None, name


def test_onnxruntime_reads_no_external_data_even_unchecked(plan_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: graph bytes handed to the engine directly (no plan, no check) that
    name a file in the working directory: ONNX Runtime looks in an empty folder instead."""
    with zipfile.ZipFile(plan_path) as archive:
        model = onnx.load_model_from_string(archive.read(GRAPH))
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "weights.bin").write_bytes(largest.raw_data)
    point_at_external_data("weights.bin")(model)
    monkeypatch.chdir(tmp_path)
    engine = OnnxRuntimeEngine({"lpips": model.SerializeToString()})
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(Exception, match="(?i)external data"):
        engine.lpips(x, x)


def test_onnxruntime_parses_graphs_as_onnx_only(tmp_path: Path) -> None:
    """Defence in depth: ONNX Runtime never sniffs graph bytes as its own flatbuffer format,
    which the plan's checks do not read."""
    options = _guarded_options(str(tmp_path), None)
    assert options.get_session_config_entry("session.load_model_format") == "ONNX"
    assert options.get_session_config_entry("session.model_external_initializers_file_folder_path") == str(tmp_path)


# -- the container ------------------------------------------------------------------------------


def zip_with_manifest(plan_path: Path, target: Path, members: dict[str, bytes]) -> Path:
    """A zip holding the plan's manifest first, then `members`."""
    with zipfile.ZipFile(plan_path) as archive:
        manifest = archive.read(MANIFEST)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr(MANIFEST, manifest)
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def test_too_many_members(plan_path: Path, tmp_path: Path) -> None:
    path = zip_with_manifest(plan_path, tmp_path / "many.plan", {f"m{i}.bin": b"" for i in range(300)})
    expect_plan_error(path, "a zip archive of 301 members; a plan has at most 256")


def copy_of(plan_path: Path, folder: Path) -> Path:
    """A private copy of the plan (other test modules leave a cache folder beside the shared one)."""
    copy = folder / "copy.plan"
    copy.write_bytes(plan_path.read_bytes())
    return copy


def test_zip_directory_too_large(plan_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_checks, "MAX_DIRECTORY_BYTES", 256)  # the tiny plan's is ~600 bytes
    expect_plan_error(copy_of(plan_path, tmp_path), "zip directory is", "at most 256")


def test_member_and_total_size_bounds(plan_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = copy_of(plan_path, tmp_path)
    monkeypatch.setattr(plan_checks, "MAX_MEMBER_BYTES", 1 << 20)
    expect_plan_error(path, "member alexnet.safetensors is 9879672 bytes; a plan member is at most 1048576")
    monkeypatch.setattr(plan_checks, "MAX_MEMBER_BYTES", 1 << 30)
    monkeypatch.setattr(plan_checks, "MAX_TOTAL_BYTES", 64 << 20)
    expect_plan_error(path, "its members add up to", "a plan holds at most 67108864")


def test_zip_bomb_is_refused_unpacked(plan_path: Path, tmp_path: Path) -> None:
    """A deflated member of 256 MiB of zeros (a few hundred KiB in the file) is refused from the
    zip directory alone: no byte inflated, in little memory and time."""
    path = zip_with_manifest(plan_path, tmp_path / "bomb.plan", {})
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive, archive.open(GRAPH, "w") as member:
        for _ in range(256):
            member.write(zeros)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        expect_plan_error(path, "member onnx/lpips.onnx is compressed", "unpacking to 268435456", "stored uncompressed")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10 and peak < 8 << 20, peak


def test_members_larger_than_the_file_are_refused(plan_path: Path, tmp_path: Path) -> None:
    """Directory entries that claim more bytes than the file holds (members overlapping one
    another, a bomb made of stored entries) are refused before any is read."""
    data = bytearray(plan_path.read_bytes())
    entry = data.rindex(b"vgg16.safetensors") - 46  # its zip directory entry: the name's last mention
    assert data[entry : entry + 4] == b"PK\x01\x02"
    size = struct.unpack_from("<L", data, entry + 20)[0]
    struct.pack_into("<LL", data, entry + 20, 3 * size, 3 * size)  # compressed and full size
    path = tmp_path / "forged.plan"
    path.write_bytes(bytes(data))
    expect_plan_error(path, "more than the file's", "overlapping or forged members")


def test_duplicate_member_names(plan_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "twice.plan"
    rewrite_zip(plan_path, path, {})
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as archive:
        archive.writestr("vgg16.safetensors", b"a second one")
    expect_plan_error(path, "two members of the same name")


@pytest.mark.parametrize("name", ["../escape.bin", "/etc/passwd", "onnx\\lpips.onnx", "onnx/./lpips.onnx", "C:/x.bin"])
def test_unsafe_member_names(plan_path: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / "names.plan"
    rewrite_zip(plan_path, path, {})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo(name), b"")
    expect_plan_error(path, "is not a safe member name")


def test_manifest_must_come_first(plan_path: Path, tmp_path: Path) -> None:
    """`info` tells a plan by its first member; a plan whose manifest is elsewhere is refused
    by `run` too, so both always judge the same file the same way."""
    path = tmp_path / "late.plan"
    with zipfile.ZipFile(plan_path) as old, zipfile.ZipFile(path, "w") as new:
        for name in sorted(old.namelist(), key=lambda n: n == MANIFEST):
            new.writestr(name, old.read(name))
    expect_plan_error(path, "manifest.json is not the first member")


# -- TensorRT engines -----------------------------------------------------------------------------

KEY = "fake-gpu-sm90-trt10.3.0"


class FakeEngine:
    """What _Graph asks of an ICudaEngine: one float32 input and output, batch up to 16."""

    num_io_tensors = 2

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def get_tensor_name(self, index: int) -> str:
        return ("in", "out")[index]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "in" else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return ([1, 4], [8, 4], [16, 4])

    def create_execution_context(self) -> object:
        return object()


class FakeRuntime:
    """Records its settings and what it deserialises, with the settings at that moment."""

    def __init__(self, logger: object) -> None:
        self.engine_host_code_allowed = True  # the opposite of TensorRT's default: must be set
        self.tempfile_control_flags = 3
        self.deserialised: list[tuple[bytes, bool, int]] = []

    def deserialize_cuda_engine(self, blob: bytes) -> FakeEngine:
        self.deserialised.append((bytes(blob), self.engine_host_code_allowed, self.tempfile_control_flags))
        return FakeEngine(bytes(blob))


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """A `tensorrt` module and a GPU of key KEY; returns the runtimes made and the engine builds."""
    made: dict[str, list] = {"runtimes": [], "builds": []}
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"
    module.float32 = "float32"
    module.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    def runtime(logger: object) -> FakeRuntime:
        made["runtimes"].append(FakeRuntime(logger))
        return made["runtimes"][-1]

    def build_engines(graphs: dict, options: object, timing: object = None, log: object = None) -> tuple[dict, bytes]:
        made["builds"].append(sorted(graphs))
        return {name: f"built {name}".encode() for name in graphs}, b"timing"

    module.Runtime = runtime
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(tensorrt_build, "tensorrt_problem", lambda: None)
    monkeypatch.setattr(tensorrt_build, "current_engine_key", lambda index=0: KEY)
    monkeypatch.setattr(tensorrt_build, "build_engines", build_engines)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    return made


def plan_with_engines(plan_path: Path, target: Path, key: str) -> tuple[Path, dict[str, bytes]]:
    files = {name: f"tensorrt/{key}/{name}.engine" for name in GRAPHS}
    blobs = {files[name]: f"engine {name} for {key}".encode() for name in GRAPHS}
    entry = {"gpu": "Fake GPU", "compute_capability": "9.0", "tensorrt": "10.3.0", "precision": "fp32", "max_batch": 16, "engines": files}
    return altered_plan(plan_path, target, {"tensorrt": {key: entry}}, blobs), blobs


def test_plan_engines_are_deserialised_without_host_code(plan_path: Path, tmp_path: Path, fake_tensorrt: dict) -> None:
    path, blobs = plan_with_engines(plan_path, tmp_path / "gpu.plan", KEY)
    TensorRTEngine.from_plan(read_plan(path), "cuda:0")
    (runtime,) = fake_tensorrt["runtimes"]
    assert runtime.engine_host_code_allowed is False and runtime.tempfile_control_flags == 0
    assert sorted(blob for blob, _, _ in runtime.deserialised) == sorted(blobs.values())
    assert all(host is False and flags == 0 for _, host, flags in runtime.deserialised)
    assert fake_tensorrt["builds"] == [] and not path.with_name("gpu.plan.cache").exists()


def test_engines_for_another_gpu_are_never_deserialised(plan_path: Path, tmp_path: Path, fake_tensorrt: dict) -> None:
    """A plan's engines for another key stay unread; the engines built here instead are cached
    only under names the code makes (content hash, this machine's key, graph names)."""
    path, _ = plan_with_engines(plan_path, tmp_path / "other.plan", "other-gpu-sm80-trt10.3.0")
    plan = read_plan(path)
    TensorRTEngine.from_plan(plan, "cuda:0")
    (runtime,) = fake_tensorrt["runtimes"]
    assert sorted(blob for blob, _, _ in runtime.deserialised) == sorted(f"built {n}".encode() for n in GRAPHS)
    assert all(host is False for _, host, _ in runtime.deserialised)
    cache = plan.cache_dir
    written = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    folder = f"tensorrt/{plan.content_sha256[:16]}-{KEY}"
    assert written == sorted([f"{folder}/{n}.engine" for n in GRAPHS] + [f"{folder}/timing.cache"])


def test_engine_members_the_manifest_does_not_list_are_refused(plan_path: Path, tmp_path: Path) -> None:
    entry = {"gpu": "Fake GPU", "compute_capability": "9.0", "tensorrt": "10.3.0", "precision": "fp32", "max_batch": 16,
             "engines": {"mapping": "tensorrt/elsewhere/mapping.engine"}}
    path = altered_plan(plan_path, tmp_path / "unlisted.plan", {"tensorrt": {KEY: entry}})
    expect_plan_error(path, "'tensorrt/elsewhere/mapping.engine', which is not a listed member")
