"""Seeded random VGG16 / AlexNet weight files in torchvision's key layout, for tests that load
networks the way users do (`--vgg16 FILE`, `Reconstructor.from_checkpoint(vgg16=FILE)`)
without downloading anything; and the lpips package's LPIPS on a given backbone's weights, the
independent reference for our φ, LPIPS(alex) monitor and eval metrics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision

from lbrgm_fast.perceptual import VGG16Features

if TYPE_CHECKING:  # imported when used: conftest.py imports this module for every test
    import lpips


def random_weight_files(folder: Path) -> dict[str, str]:
    """{"vgg16": path, "alexnet": path} of files written into `folder`."""
    vgg = {f"features.{k}": v for k, v in VGG16Features.random(0).layers.state_dict().items()}
    torch.save(vgg, folder / "vgg16.pth")
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / "alexnet.pth")
    return {"vgg16": str(folder / "vgg16.pth"), "alexnet": str(folder / "alexnet.pth")}


def lpips_reference(net: str, backbone: torch.nn.Module) -> lpips.LPIPS:
    """lpips.LPIPS(net=`net`) with its random backbone's convolutions set to `backbone`'s, in order.

    `backbone` is any module holding the network's convolutions in forward order (torchvision's
    `features`, our VGG16Features' layers, LpipsAlex's backbone), so the copy does not depend on
    our own key mapping. lpips's linear heads keep their real (shipped) weights."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained=`
        ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    targets = [m for m in ref.net.modules() if isinstance(m, torch.nn.Conv2d)]
    sources = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(targets) == len(sources) == {"vgg": 13, "alex": 5}[net]
    with torch.no_grad():
        for target, source in zip(targets, sources):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    return ref
