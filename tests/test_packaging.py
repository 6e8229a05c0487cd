"""The wheel installs kernels/ and export/ inside the lbrgm_fast namespace, nothing generic at the top."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_layout(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("lbrgm_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"lbrgm_fast", next(n for n in top_level if n.endswith(".dist-info"))}
    for module in ("lbrgm_fast/kernels/upfirdn2d.py", "lbrgm_fast/kernels/modulated_conv.py", "lbrgm_fast/export/__init__.py", "lbrgm_fast/checkpoints/safe_pickle.py", "lbrgm_fast/runtime/step.py"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lbrgm-fast = lbrgm_fast.cli:main" in entry_points
