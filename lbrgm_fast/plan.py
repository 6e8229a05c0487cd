"""Engine plans: one self-contained file holding everything `lbrgm-fast run --engine` needs.

A plan is a zip archive (members stored uncompressed) with `manifest.json` first, the generator
and the perceptual/monitor weights as safetensors, the ONNX graphs and, when they were built,
serialized TensorRT engines per GPU model and TensorRT version. The manifest records the SHA-256
of every other member, and `read_plan` checks all of them: a corrupted, truncated, foreign or
tampered file, or an unknown format version, is one `PlanError` line naming the file. No pickle
anywhere. A plan may come from a stranger: the zip container is bounded and every ONNX graph is
checked before anything loads it (lbrgm_fast/plan_checks.py). The full format, and what a plan
can and cannot make lbrgm-fast do, are documented in docs/plan-format.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import safetensors.torch
import torch

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import CheckpointError, PlanError
from lbrgm_fast.io import atomic_write
from lbrgm_fast.model import Generator
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.plan_checks import directory_problem, entries_problem, graph_problem, member_name_problem

__all__ = ["FORMAT", "GRAPHS", "MANIFEST", "VERSION", "Plan", "is_plan_file", "read_plan", "write_plan"]

FORMAT = "lbrgm-plan"
VERSION = 1
#: The ONNX graphs a plan may hold (docs/plan-format.md).
GRAPHS = ("mapping", "synthesis", "features", "lpips")
MANIFEST = "manifest.json"
#: How `info` names the weights of φ and the monitor, per the manifest's "weights" entry.
WEIGHTS_DESCRIPTIONS = {
    "torchvision": "torchvision",
    "unofficial": "NOT torchvision's official file (SHA-256 {sha256:.8}...): not the published LPIPS",
    "random": "RANDOM (seed {seed}): tests/demo only",
}
_MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A zip's first local file header up to the name: signature, 22 bytes of versions, flags,
# method, time, CRC and sizes, then the name's and the extra field's lengths.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def describe_weights(entry: Mapping[str, Any]) -> str:
    """What weights a manifest's "perceptual" or "monitor" entry holds: torchvision's, another
    file of their layout, or random ones."""
    return WEIGHTS_DESCRIPTIONS.get(entry["weights"], "{weights}").format(**{"seed": None, "sha256": "", **entry})


def _fail(path: Path | str, problem: str) -> PlanError:
    return PlanError(f"cannot use plan '{path}': {problem}")


def write_plan(path: str | Path, manifest: Mapping[str, Any], members: Mapping[str, bytes]) -> Path:
    """Write a plan atomically (a temporary file, then a rename): `manifest` plus the checksums
    of `members`, then the members. Returns the path.

    Raises PlanError if a member name is unsafe or the folder is not writable.
    """
    target = Path(path)
    for name in members:
        if name == MANIFEST or member_name_problem(name):
            raise PlanError(f"cannot write plan '{target}': invalid member name {name!r}")
    full = dict(manifest)
    full["members"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in sorted(members.items())}
    encoded = json.dumps(full, indent=2, sort_keys=True).encode()

    def write(handle: IO[bytes]) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr(MANIFEST, encoded)
            for name in sorted(members):
                archive.writestr(name, members[name])

    try:
        atomic_write(target, write)
    except OSError as exc:
        raise PlanError(f"cannot write plan '{target}': {exc.strerror or exc}") from None
    return target


def is_plan_file(path: str | Path) -> bool:
    """Whether `path` is a zip whose first member is the manifest, as every plan's is: what
    `lbrgm-fast info` tells plans from checkpoints by. Decided from the first local header (30
    bytes and a name), never from the zip directory, which `read_plan` checks before parsing."""
    try:
        with Path(path).open("rb") as handle:
            header = handle.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size:
                return False
            signature, name_length, _ = _LOCAL_HEADER.unpack(header)
            return signature == b"PK\x03\x04" and handle.read(name_length) == MANIFEST.encode()
    except OSError:
        return False


def read_plan(path: str | Path) -> Plan:
    """Open and fully validate a plan: container bounds, structure, manifest, version, every
    member's SHA-256 and every ONNX graph's content (docs/plan-format.md, "Trust").

    Raises PlanError (one line naming the file) for anything that is not an intact, safe plan
    this version of lbrgm-fast can read; nothing in the plan has been loaded or run by then.
    """
    p = Path(path)
    if not p.is_file():
        raise _fail(p, "no such file")
    try:
        with p.open("rb") as handle:
            head = handle.read(4)
            archive = _open_archive(handle, p)
            raw = _read_member(archive, MANIFEST, _MAX_MANIFEST_BYTES, p)
            manifest = _parse_manifest(raw, p)
            _check_members(archive, manifest, p)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        # zipfile raises all of these for damaged or hostile archives (bad CRC, cut-off data,
        # unknown compression, encryption).
        if head == b"PK\x03\x04":
            raise _fail(p, f"the file is truncated or corrupt ({exc})") from None
        raise _fail(p, "it is not an lbrgm-fast plan (not a zip archive); build one with `lbrgm-fast build`") from None
    except OSError as exc:
        raise _fail(p, f"cannot read it ({exc.strerror or exc})") from None
    return Plan(p, manifest, hashlib.sha256(raw).hexdigest())


def _open_archive(handle: IO[bytes], path: Path) -> zipfile.ZipFile:
    """The zip of an open plan file, its directory bounded before `zipfile` parses it and its
    entries checked (plan_checks) before any member is read."""
    problem = directory_problem(handle)
    if problem:
        raise _fail(path, problem)
    archive = zipfile.ZipFile(handle)
    entries = archive.infolist()
    if MANIFEST not in archive.namelist():
        raise _fail(path, f"it is a zip archive but not an lbrgm-fast plan (no {MANIFEST}); build one with `lbrgm-fast build`")
    if entries[0].filename != MANIFEST or entries[0].header_offset != 0:
        raise _fail(path, f"its {MANIFEST} is not the first member (a plan is written with it first)")
    problem = entries_problem(entries, handle.seek(0, os.SEEK_END))
    if problem:
        raise _fail(path, problem)
    return archive


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise _fail(path, f"member {name} is {info.file_size} bytes, more than a plan ever holds there")
    return archive.read(name)  # checks the zip CRC: BadZipFile on corruption


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _fail(path, f"its {MANIFEST} is not valid JSON (corrupt file?)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(path, f"it is a zip archive but not an lbrgm-fast plan ({MANIFEST} has no format={FORMAT!r})")
    version = manifest.get("version")
    if version != VERSION:
        raise _fail(path, f"plan format version {version!r} is not supported (this lbrgm-fast reads version {VERSION}); rebuild it with `lbrgm-fast build`")
    problem = _manifest_problem(manifest)
    if problem:
        raise _fail(path, f"its manifest is invalid: {problem}")
    return manifest


def _manifest_problem(m: dict[str, Any]) -> str | None:
    """First schema violation of a version-1 manifest, or None."""
    expect: dict[str, type | tuple[type, ...]] = {
        "created": str, "source_sha256": str, "generator": dict, "perceptual": dict,
        "monitor": (dict, type(None)), "precision": dict, "max_batch": int, "versions": dict,
        "graphs": dict, "tensorrt": dict, "members": dict,
    }
    for key, kind in expect.items():
        if not isinstance(m.get(key), kind):
            return f"'{key}' is missing or has the wrong type"
    if not _SHA256.match(m["source_sha256"]):
        return "'source_sha256' is not a SHA-256"
    for name, entry in m["members"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])
                and isinstance(entry.get("size"), int)):
            return f"member entry {name!r} is malformed"
    referenced = [m["generator"].get("file"), m["perceptual"].get("file")]
    referenced += [] if m["monitor"] is None else [m["monitor"].get("file")]
    referenced += [g.get("file") if isinstance(g, dict) else None for g in m["graphs"].values()]
    for key, entry in m["tensorrt"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("engines"), dict):
            return f"tensorrt entry {key!r} is malformed"
        referenced += list(entry["engines"].values())
    for name in referenced:
        if name not in m["members"]:
            return f"it refers to {name!r}, which is not a listed member"
    if not isinstance(m["generator"].get("config"), dict) or not isinstance(m["perceptual"].get("resolution"), int):
        return "the generator config or the perceptual resolution is missing"
    if m["precision"].get("tensorrt") not in ("fp32", "fp16"):
        return "precision.tensorrt must be 'fp32' or 'fp16'"
    return None


def _check_members(archive: zipfile.ZipFile, manifest: dict[str, Any], path: Path) -> None:
    """Every listed member present, of its size and SHA-256, nothing unlisted; every ONNX graph
    checked (plan_checks.graph_problem) on the same bytes, so `info` and `run` refuse the same
    plans before any graph is loaded."""
    names = archive.namelist()
    listed = manifest["members"]
    graphs = {entry["file"] for entry in manifest["graphs"].values()}
    for name in names:
        if name != MANIFEST and name not in listed:
            raise _fail(path, f"it holds a member the manifest does not list ({name!r})")
    for name, entry in listed.items():
        if name not in names:
            raise _fail(path, f"member {name} is missing (truncated file?)")
        if archive.getinfo(name).file_size != entry["size"]:
            raise _fail(path, f"member {name} has the wrong size (corrupt or modified file)")
        digest = hashlib.sha256()
        graph = bytearray() if name in graphs else None  # a graph is parsed whole; weights are streamed
        with archive.open(name) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                if graph is not None:
                    graph += chunk
        if digest.hexdigest() != entry["sha256"]:
            raise _fail(path, f"checksum mismatch in member {name} (the file is corrupt or was modified)")
        problem = None if graph is None else graph_problem(bytes(graph))
        if problem:
            raise _fail(path, f"member {name} is refused: {problem}")


class Plan:
    """A validated plan. Members are read (and their checksum checked again) on demand.

    Attributes:
        path: The plan file.
        manifest: The parsed manifest (see docs/plan-format.md).
        content_sha256: SHA-256 of the manifest, which lists every member's SHA-256, so it
            identifies the plan's whole content.
        config: The generator's configuration.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], content_sha256: str) -> None:
        self.path = path
        self.manifest = manifest
        self.content_sha256 = content_sha256
        try:
            self.config = GeneratorConfig.from_dict(manifest["generator"]["config"])
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"its generator config is invalid ({exc})") from None

    @property
    def cache_dir(self) -> Path:
        """Where this plan's machine-specific artefacts go (rebuilt TensorRT engines, the
        measured backend choice): a folder next to the plan, created when first needed."""
        return self.path.with_name(self.path.name + ".cache")

    def member(self, name: str) -> bytes:
        """A member's bytes, checked against the manifest's SHA-256 again (the file may have
        changed since it was opened, so its container is checked again too)."""
        entry = self.manifest["members"].get(name)
        if entry is None:
            raise KeyError(name)
        try:
            with self.path.open("rb") as handle:
                data = _open_archive(handle, self.path).read(name)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise _fail(self.path, f"cannot read member {name} ({exc})") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise _fail(self.path, f"checksum mismatch in member {name} (the file changed since it was opened)")
        return data

    # -- networks ---------------------------------------------------------------------------------

    def generator(self) -> Generator:
        """The generator (CPU, float32, eval mode, frozen)."""
        from lbrgm_fast.checkpoints.lbrgm_format import read_lbrgm

        name = self.manifest["generator"]["file"]
        try:
            result = read_lbrgm(self.member(name), f"{self.path}:{name}")
        except CheckpointError as exc:
            raise _fail(self.path, f"its generator is invalid ({exc})") from None
        if result.config != self.config:
            raise _fail(self.path, "its generator does not match the manifest's config")
        return Generator.from_state_dict(result.config, result.state_dict)

    def perceptual(self) -> VGG16Features:
        """φ at the plan's resolution (random backbones are marked so in the manifest)."""
        entry = self.manifest["perceptual"]
        return VGG16Features.from_torchvision_state_dict(self._tensors(entry["file"]), resolution=entry["resolution"])

    def monitor(self) -> LpipsAlex | None:
        """The LPIPS(alex) monitor, or None when the plan was built without AlexNet weights."""
        entry = self.manifest["monitor"]
        return None if entry is None else LpipsAlex.from_torchvision_state_dict(self._tensors(entry["file"]))

    def _tensors(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return safetensors.torch.load(self.member(name))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise _fail(self.path, f"member {name} is not a valid safetensors file ({exc})") from None

    # -- graphs and engines -----------------------------------------------------------------------

    def has_graph(self, name: str) -> bool:
        return name in self.manifest["graphs"]

    def onnx(self, name: str) -> bytes:
        """ONNX bytes of graph `name` ("mapping", "synthesis", "features", "lpips").

        The one way graphs leave a plan: `read_plan` checked every graph
        (`plan_checks.graph_problem`: self-contained standard ONNX), and `member` returns only
        bytes with the SHA-256 of the ones it checked.
        """
        if name not in self.manifest["graphs"]:
            raise _fail(self.path, f"it has no {name} graph")
        return self.member(self.manifest["graphs"][name]["file"])

    def tensorrt_entry(self, key: str) -> dict[str, Any] | None:
        """The manifest entry of the TensorRT engines built for `key` (GPU model, compute
        capability, TensorRT version), or None."""
        return self.manifest["tensorrt"].get(key)

    def describe(self) -> dict[str, Any]:
        """What `lbrgm-fast info` shows about a plan."""
        m, cfg = self.manifest, self.config
        perceptual = m["perceptual"]
        monitor = m["monitor"]

        return {
            "format": f"{FORMAT} v{m['version']}",
            "created": m["created"],
            "resolution": cfg.img_resolution,
            "z_dim": cfg.z_dim,
            "w_dim": cfg.w_dim,
            "num_ws": cfg.num_ws,
            "source_sha256": m["source_sha256"],
            "source_format": m["generator"].get("source_format"),
            "perceptual": f"vgg16 at {perceptual['resolution']} px, {describe_weights(perceptual)}",
            "monitor": "none" if monitor is None else f"lpips(alex), {describe_weights(monitor)}",
            "graphs": {name: f"onnx opset {g['opset']}" for name, g in sorted(m["graphs"].items())},
            "precision": m["precision"],
            "max_batch": m["max_batch"],
            "tensorrt_engines": sorted(m["tensorrt"]) or "none (built on first use where TensorRT is installed)",
            "versions": m["versions"],
            "size_bytes": self.path.stat().st_size,
            "content_sha256": self.content_sha256,
        }
