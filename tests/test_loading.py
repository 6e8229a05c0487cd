"""`Reconstructor.from_checkpoint`: one call loads the generator, φ and the monitor from the
fixture checkpoints or from an engine plan, and the Reconstructor it builds restores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lbrgm_fast.errors import UserError
from lbrgm_fast.operators import Inpainting
from lbrgm_fast.perceptual import VGG16Features
from lbrgm_fast.reconstruct import Reconstructor
from lbrgm_fast.runtime.engines import TorchEngine

from plans import PHI_RESOLUTION, tiny32_plan
from reference import FIXTURES, nvidia_generator

CHECKPOINTS = {
    "nvidia-tiny32": FIXTURES / "stylegan2-ada" / "tiny32" / "network-snapshot.pkl",
    "rosinality-tiny32": FIXTURES / "rosinality" / "tiny32" / "checkpoint.pt",
}
SHORT = dict(steps=2, candidates=2, log_every=1, early_stop="none")


def restores(rec: Reconstructor) -> bool:
    """One short run on the Reconstructor's own generator output, with finite results."""
    res = rec.generator.img_resolution
    op = Inpainting.from_preset("eyes", res)
    with torch.no_grad():
        truth = ((rec.generator(torch.randn(1, rec.generator.z_dim, generator=torch.Generator().manual_seed(0))) + 1) / 2).clamp(0, 1)
    result = rec.run(op(truth), op, seed=0)
    return result.images.shape == (1, 3, res, res) and bool(torch.isfinite(result.images).all())


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_from_checkpoint_loads_every_fixture_format(name: str, weights: dict[str, str]) -> None:
    rec = Reconstructor.from_checkpoint(CHECKPOINTS[name], device="cpu", vgg16=weights["vgg16"], alexnet=weights["alexnet"], **SHORT)
    if name.startswith("nvidia"):
        reference = nvidia_generator("tiny32").state_dict()
        assert all(torch.equal(rec.generator.state_dict()[k], v) for k, v in reference.items())
    expected_vgg = torch.load(weights["vgg16"], weights_only=True)
    assert all(torch.equal(rec.perceptual.layers.state_dict()[k.removeprefix("features.")], v) for k, v in expected_vgg.items())
    assert rec.monitor is not None and isinstance(rec.engine, TorchEngine) and rec.steps == 2
    assert not rec.generator.training and not any(p.requires_grad for p in rec.generator.parameters())
    if name == "nvidia-tiny32":
        assert restores(rec)


def test_from_checkpoint_without_monitor_and_with_bad_weights(weights: dict[str, str], tmp_path: Path) -> None:
    path = CHECKPOINTS["nvidia-tiny32"]
    assert Reconstructor.from_checkpoint(path, device="cpu", vgg16=weights["vgg16"], monitor=False).monitor is None
    with pytest.raises(UserError, match="not found"):
        Reconstructor.from_checkpoint(path, device="cpu", vgg16=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="--forward-backend onnxruntime"):
        Reconstructor.from_checkpoint(path, device="cpu", vgg16=weights["vgg16"], forward_backend="onnxruntime")


def test_from_checkpoint_reads_an_engine_plan(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Told apart from a checkpoint by content: the plan's generator, φ and monitor, no weight files.
    rec = Reconstructor.from_checkpoint(tiny32_plan(tmp_path_factory), device="cpu", forward_backend="torch", **SHORT)
    reference = nvidia_generator("tiny32").state_dict()
    assert all(torch.equal(rec.generator.state_dict()[k], v) for k, v in reference.items())
    assert isinstance(rec.perceptual, VGG16Features) and rec.perceptual.resolution == PHI_RESOLUTION
    assert rec.monitor is not None and rec.engine.name == "torch"
    assert restores(rec)
