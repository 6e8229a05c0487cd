"""Helpers to build the reference generators of tests/fixtures independently of the loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.model import Generator

FIXTURES = Path(__file__).parent / "fixtures"
NVIDIA_FIXTURES = ["tiny32", "ffhqlike64"]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, the metric of the fixtures' tolerances."""
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def nvidia_config(name: str) -> GeneratorConfig:
    kwargs = json.loads((FIXTURES / "stylegan2-ada" / name / "init_kwargs.json").read_text())["init_kwargs"]
    synthesis = kwargs["synthesis_kwargs"]
    return GeneratorConfig(
        z_dim=kwargs["z_dim"],
        w_dim=kwargs["w_dim"],
        img_resolution=kwargs["img_resolution"],
        img_channels=kwargs["img_channels"],
        mapping_layers=kwargs["mapping_kwargs"]["num_layers"],
        channel_base=synthesis["channel_base"],
        channel_max=synthesis["channel_max"],
        num_fp16_res=synthesis["num_fp16_res"],
        conv_clamp=synthesis["conv_clamp"],
    )


def nvidia_generator(name: str) -> Generator:
    """The fixture generator built from weights.npz (independent of the checkpoint loaders)."""
    weights = np.load(FIXTURES / "stylegan2-ada" / name / "weights.npz")
    state = {k: torch.from_numpy(weights[k]) for k in weights.files if not k.endswith("resample_filter")}
    G = Generator(nvidia_config(name))
    G.load_state_dict(state, strict=True)
    return G.eval().requires_grad_(False)


def nvidia_io(name: str) -> dict[str, torch.Tensor]:
    io = np.load(FIXTURES / "stylegan2-ada" / name / "io.npz")
    return {k: torch.from_numpy(io[k]) for k in io.files}


