"""Engine plans: a full round trip against the independent fixture weights, and every way a
plan file can be unusable (each one clear PlanError line naming the file)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from lbrgm_fast.checkpoints import read_checkpoint
from lbrgm_fast.errors import PlanError
from lbrgm_fast.job import RunOptions, load_models
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.plan import MANIFEST, describe_weights, read_plan, write_plan

from plans import (
    PHI_RESOLUTION,
    SEED,
    TINY32_PICKLE,
    altered_plan,
    expect_plan_error,
    plan_contents,
    rewrite_zip,
    tiny32_plan,
)
from reference import FIXTURES, nvidia_config, nvidia_generator


@pytest.fixture(scope="session")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny32_plan(tmp_path_factory)


# -- round trip ---------------------------------------------------------------------------------


def test_plan_holds_the_checkpoint_and_perceptual_weights(plan_path: Path) -> None:
    plan = read_plan(plan_path)
    reference = nvidia_generator("tiny32").state_dict()
    restored = plan.generator().state_dict()
    assert restored.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(restored[key], value), key
    assert plan.config == nvidia_config("tiny32")

    phi = plan.perceptual()
    assert phi.resolution == PHI_RESOLUTION
    for key, value in VGG16Features.random(SEED, resolution=PHI_RESOLUTION).state_dict().items():
        assert torch.equal(phi.state_dict()[key], value), key
    monitor = plan.monitor()
    assert monitor is not None
    for key, value in LpipsAlex.random(SEED + 1).state_dict().items():
        assert torch.equal(monitor.state_dict()[key], value), key


def test_manifest_records_source_versions_and_random_backbones(plan_path: Path) -> None:
    plan = read_plan(plan_path)
    m = plan.manifest
    assert m["format"] == "lbrgm-plan" and m["version"] == 1
    assert m["source_sha256"] == hashlib.sha256(TINY32_PICKLE.read_bytes()).hexdigest()
    assert m["generator"]["source_format"] == "nvidia-pickle"
    assert m["perceptual"]["weights"] == "random" and m["perceptual"]["seed"] == SEED
    assert m["precision"]["onnx"] == "fp32"
    assert {"torch", "onnx", "onnxruntime", "lbrgm_fast", "python"} <= set(m["versions"])
    assert set(m["graphs"]) == {"mapping", "synthesis", "features", "lpips"}
    assert all(g["opset"] == 17 for g in m["graphs"].values())
    assert m["graphs"]["synthesis"]["inputs"] == {"ws": ["batch", 8, 32]}
    assert m["tensorrt"] == {}  # no TensorRT here
    # The plan's content id is the manifest's hash, and the manifest lists every member's hash.
    with zipfile.ZipFile(plan_path) as archive:
        assert archive.namelist()[0] == MANIFEST
        assert plan.content_sha256 == hashlib.sha256(archive.read(MANIFEST)).hexdigest()
        for name, entry in m["members"].items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == entry["sha256"]


def test_generator_member_is_an_lbrgm_checkpoint(plan_path: Path, tmp_path: Path) -> None:
    """Another program can take the generator out of a plan and read it as a checkpoint."""
    with zipfile.ZipFile(plan_path) as archive:
        (tmp_path / "g.safetensors").write_bytes(archive.read("generator.safetensors"))
    ckpt = read_checkpoint(tmp_path / "g.safetensors")
    assert ckpt.format == "lbrgm" and ckpt.config == nvidia_config("tiny32")
    assert ckpt.details["source_sha256"] == read_plan(plan_path).manifest["source_sha256"]


def test_describe_for_info(plan_path: Path) -> None:
    info = read_plan(plan_path).describe()
    assert info["format"] == "lbrgm-plan v1" and info["resolution"] == 32
    assert "RANDOM" in info["perceptual"] and "RANDOM" in info["monitor"]
    assert info["tensorrt_engines"].startswith("none")
    json.dumps(info)  # printable as JSON by `lbrgm-fast info --json`


def test_load_models_reads_plans(plan_path: Path) -> None:
    """The job's `--engine` path: the same weights as the plan, the source hash in the report."""
    models = load_models(RunOptions(inputs=[], engine=str(plan_path)), torch.device("cpu"), need_monitor=True)
    assert models.source["source_sha256"] == read_plan(plan_path).manifest["source_sha256"]
    reference = nvidia_generator("tiny32").state_dict()
    assert all(torch.equal(models.generator.state_dict()[k], v) for k, v in reference.items())
    assert models.monitor is not None and models.perceptual is not None


def test_plan_without_monitor(plan_path: Path, tmp_path: Path) -> None:
    manifest, members = plan_contents(plan_path)
    manifest["monitor"] = None
    del manifest["graphs"]["lpips"]
    for name in ("alexnet.safetensors", "onnx/lpips.onnx"):
        del members[name]
    plan = read_plan(write_plan(tmp_path / "no-monitor.plan", manifest, members))
    assert plan.monitor() is None and not plan.has_graph("lpips")
    assert plan.describe()["monitor"] == "none"


# -- failure modes --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    expect_plan_error(tmp_path / "nope.plan", "no such file")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"hello", b""], ids=["png", "text", "empty"])
def test_foreign_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "foreign.plan"
    path.write_bytes(content)
    expect_plan_error(path, "not an lbrgm-fast plan", "not a zip archive")


def test_foreign_zip(tmp_path: Path) -> None:
    """A torch.save file is a zip too (here: the rosinality fixture checkpoint)."""
    path = tmp_path / "checkpoint.plan"
    path.write_bytes((FIXTURES / "rosinality" / "tiny32" / "checkpoint.pt").read_bytes())
    expect_plan_error(path, "not an lbrgm-fast plan", "no manifest.json")


def test_foreign_manifest(plan_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "other.plan"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MANIFEST, json.dumps({"format": "something-else", "version": 1}))
    expect_plan_error(path, "not an lbrgm-fast plan", "format='lbrgm-plan'")


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated(plan_path: Path, tmp_path: Path, fraction: float) -> None:
    data = plan_path.read_bytes()
    path = tmp_path / "cut.plan"
    path.write_bytes(data[: int(len(data) * fraction)])
    expect_plan_error(path, "truncated or corrupt")


def test_corrupted_byte(plan_path: Path, tmp_path: Path) -> None:
    """A flipped byte inside a member: the zip's own CRC notices first."""
    data = bytearray(plan_path.read_bytes())
    with zipfile.ZipFile(plan_path) as archive:
        info = archive.getinfo("onnx/synthesis.onnx")
    data[info.header_offset + 200] ^= 0xFF  # inside the stored member's bytes
    path = tmp_path / "flipped.plan"
    path.write_bytes(bytes(data))
    expect_plan_error(path, "corrupt")


def test_checksum_mismatch(plan_path: Path, tmp_path: Path) -> None:
    """A member replaced in a well-formed zip (consistent CRC) keeps its old manifest checksum."""
    path = tmp_path / "tampered.plan"
    with zipfile.ZipFile(plan_path) as archive:
        original = archive.read("vgg16.safetensors")
    changed = bytearray(original)
    changed[-1] ^= 0x01
    rewrite_zip(plan_path, path, {"vgg16.safetensors": bytes(changed)})
    expect_plan_error(path, "checksum mismatch", "vgg16.safetensors")


def test_member_changed_after_opening(plan_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "swapped.plan"
    path.write_bytes(plan_path.read_bytes())
    plan = read_plan(path)
    with zipfile.ZipFile(plan_path) as archive:
        original = archive.read("onnx/mapping.onnx")
    rewrite_zip(plan_path, path, {"onnx/mapping.onnx": original[:-1] + bytes([original[-1] ^ 1])})
    with pytest.raises(PlanError, match="checksum mismatch in member onnx/mapping.onnx"):
        plan.onnx("mapping")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_version(plan_path: Path, tmp_path: Path, version: object) -> None:
    path = altered_plan(plan_path, tmp_path / "future.plan", {"version": version})
    expect_plan_error(path, f"plan format version {version!r} is not supported", "reads version 1")


def test_manifest_not_json(plan_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "garbled.plan"
    rewrite_zip(plan_path, path, {MANIFEST: b"{not json"})
    expect_plan_error(path, "not valid JSON")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"source_sha256": "abc"}, "'source_sha256' is not a SHA-256"),
        ({"graphs": {"mapping": {"file": "onnx/elsewhere.onnx"}}}, "'onnx/elsewhere.onnx', which is not a listed member"),
        ({"precision": {"tensorrt": "int4"}}, "precision.tensorrt"),
        ({"generator": "g"}, "'generator' is missing or has the wrong type"),
    ],
)
def test_invalid_manifest(plan_path: Path, tmp_path: Path, change: dict, fragment: str) -> None:
    path = altered_plan(plan_path, tmp_path / "invalid.plan", change)
    expect_plan_error(path, "manifest is invalid", fragment)


def test_invalid_generator_config(plan_path: Path, tmp_path: Path) -> None:
    manifest, members = plan_contents(plan_path)
    manifest["generator"]["config"]["img_resolution"] = 48
    path = write_plan(tmp_path / "config.plan", manifest, members)
    expect_plan_error(path, "generator config is invalid")


def test_unlisted_and_missing_members(plan_path: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra.plan"
    rewrite_zip(plan_path, extra, {})
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("payload.bin", b"surprise")
    expect_plan_error(extra, "does not list", "payload.bin")

    missing = tmp_path / "missing.plan"
    with zipfile.ZipFile(plan_path) as old, zipfile.ZipFile(missing, "w") as new:
        for name in old.namelist():
            if name != "alexnet.safetensors":
                new.writestr(name, old.read(name))
    expect_plan_error(missing, "member alexnet.safetensors is missing")


def test_write_is_atomic(plan_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway (disk full) leaves the previous plan untouched, no temporary
    file behind, and is one PlanError line."""
    path = tmp_path / "plan.plan"
    path.write_bytes(plan_path.read_bytes())
    manifest, members = plan_contents(plan_path)
    writestr = zipfile.ZipFile.writestr
    calls = []

    def disk_full(self: zipfile.ZipFile, name: str, data: bytes) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        writestr(self, name, data)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full)
    with pytest.raises(PlanError, match="cannot write plan .*No space left on device"):
        write_plan(path, manifest, members)
    assert path.read_bytes() == plan_path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.plan"]


@pytest.mark.parametrize("name", ["../escape.bin", "/abs.bin", "manifest.json", "a//b"])
def test_write_rejects_unsafe_member_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(PlanError, match="invalid member name"):
        write_plan(tmp_path / "x.plan", {}, {name: b""})


def test_a_plan_built_with_unofficial_weights_says_so(weights: dict[str, str], tmp_path: Path) -> None:
    # Any state dict of torchvision's layout loads (here: random weights saved as files), but
    # the plan records that it is not the official file, and info and run --engine say so.
    from lbrgm_fast.build import _load_perceptual

    class Notes:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def note(self, message: str) -> None:
            self.lines.append(message)

    reporter = Notes()
    _, monitor, phi_entry, monitor_entry = _load_perceptual(weights["vgg16"], weights["alexnet"], None, 32, reporter)
    notes = reporter.lines
    expected = hashlib.sha256(Path(weights["vgg16"]).read_bytes()).hexdigest()
    assert phi_entry == {"weights": "unofficial", "seed": None, "sha256": expected, "resolution": 32}
    assert monitor is not None and monitor_entry["weights"] == "unofficial"
    assert len(notes) == 2 and all("not torchvision's" in n for n in notes)
    assert describe_weights(phi_entry) == f"NOT torchvision's official file (SHA-256 {expected[:8]}...): not the published LPIPS"
    assert describe_weights({"weights": "torchvision"}) == "torchvision"
