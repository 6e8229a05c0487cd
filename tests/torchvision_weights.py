"""Seeded random VGG16 / AlexNet weight files in torchvision's key layout, for tests that load
networks the way users do (`--vgg16 FILE`, `Reconstructor.from_checkpoint(vgg16=FILE)`)
without downloading anything."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from lbrgm_fast.perceptual import VGG16Features


def random_weight_files(folder: Path) -> dict[str, str]:
    """{"vgg16": path, "alexnet": path} of files written into `folder`."""
    vgg = {f"features.{k}": v for k, v in VGG16Features.random(0).layers.state_dict().items()}
    torch.save(vgg, folder / "vgg16.pth")
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / "alexnet.pth")
    return {"vgg16": str(folder / "vgg16.pth"), "alexnet": str(folder / "alexnet.pth")}
