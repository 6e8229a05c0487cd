"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from lbrgm_fast.model import Generator
from lbrgm_fast.runtime.reproducibility import configure_process

# As `lbrgm-fast` does at start, before the first matrix product: the tests see the command's
# reproducibility settings.
configure_process()

from reference import NVIDIA_FIXTURES, nvidia_generator
from torchvision_weights import random_weight_files


@pytest.fixture(params=NVIDIA_FIXTURES)
def fixture_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny32() -> Generator:
    return nvidia_generator("tiny32")


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{"vgg16": path, "alexnet": path}: seeded random VGG16 / AlexNet files in torchvision's key
    layout (no download here), written once for the whole session."""
    return random_weight_files(tmp_path_factory.mktemp("weights"))
