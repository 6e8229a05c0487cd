"""One engine plan of the tiny32 fixture, built once per test session and shared by the test
modules that need it (building exports four ONNX graphs: tens of seconds on a 2-core CPU)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from lbrgm_fast.build import build_plan
from lbrgm_fast.errors import PlanError
from lbrgm_fast.plan import MANIFEST, read_plan, write_plan

from reference import FIXTURES


TINY32_PICKLE = FIXTURES / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl"
#: φ's resolution in the test plan (>= 16; 256 in real use) and the seed of its random backbones.
PHI_RESOLUTION = 32
SEED = 0

_built: dict[str, Path] = {}


def tiny32_plan(factory: pytest.TempPathFactory) -> Path:
    """The tiny32 plan (random φ and monitor, seed 0, φ at 32 px); never modify it in place."""
    if "tiny32" not in _built:
        folder = factory.mktemp("plan")
        _built["tiny32"] = build_plan(
            TINY32_PICKLE, folder / "tiny32.plan", random_perceptual_seed=SEED, perceptual_resolution=PHI_RESOLUTION
        )
    return _built["tiny32"]


def plan_contents(path: Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest without its member checksums, members) of a plan, to write altered copies."""
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        members = {n: archive.read(n) for n in archive.namelist() if n != MANIFEST}
    del manifest["members"]
    return manifest, members


def rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    """Copy a plan's archive with some members' bytes replaced, leaving its manifest as it was
    (so the zip itself is valid and only the plan's own checksums can notice)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as new:
        for name in old.namelist():
            new.writestr(name, replace.get(name, old.read(name)))
    target.write_bytes(buffer.getvalue())


def altered_plan(source: Path, target: Path, manifest_changes: dict, extra: dict[str, bytes] | None = None) -> Path:
    """A valid plan (fresh checksums) with top-level manifest fields changed and members added."""
    manifest, members = plan_contents(source)
    manifest.update(manifest_changes)
    members.update(extra or {})
    return write_plan(target, manifest, members)


def expect_plan_error(path: Path, *fragments: str) -> str:
    """read_plan refuses `path` in one line naming it and holding every fragment (so `info` and
    `run` do too), and leaves no engine cache beside it. Returns the message."""
    with pytest.raises(PlanError) as info:
        read_plan(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not path.with_name(path.name + ".cache").exists()
    return message
