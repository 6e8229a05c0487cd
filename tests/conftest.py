"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from lbrgm_fast.model import Generator
from lbrgm_fast.runtime.reproducibility import configure_process

# As `lbrgm-fast` does at start, before the first matrix product: the tests see the command's
# reproducibility settings.
configure_process()

from reference import NVIDIA_FIXTURES, nvidia_generator


@pytest.fixture(params=NVIDIA_FIXTURES)
def fixture_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny32() -> Generator:
    return nvidia_generator("tiny32")
