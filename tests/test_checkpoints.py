"""Reading real checkpoints: NVIDIA pickle, rosinality .pt, lbrgm round trips, model parity."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lbrgm_fast.checkpoints import (
    Checkpoint,
    convert,
    expected_shapes,
    load_generator,
    read_checkpoint,
    save_lbrgm,
)
from lbrgm_fast.checkpoints.layout import W_AVG_SAMPLES, W_AVG_SEED, solve_channels
from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import CheckpointError

from reference import nvidia_config

FIXTURES = Path(__file__).parent / "fixtures"
NV_DIR = FIXTURES / "stylegan2-ada" / "tiny32"
NV_PKL = NV_DIR / "network-snapshot.pkl"
ROS_DIR = FIXTURES / "rosinality" / "tiny32"
ROS_PT = ROS_DIR / "checkpoint.pt"


def rel_err(out: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def nvidia_reference_weights() -> dict[str, np.ndarray]:
    npz = np.load(NV_DIR / "weights.npz")
    return {k: npz[k] for k in npz.files if not k.endswith("resample_filter")}


def assert_same_checkpoint(a: Checkpoint, b: Checkpoint) -> None:
    assert a.config == b.config
    assert list(a.state_dict) == list(b.state_dict)
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), key


# --- NVIDIA pickle --------------------------------------------------------------------------


def test_nvidia_pickle_config_matches_init_kwargs() -> None:
    ckpt = read_checkpoint(NV_PKL)
    assert ckpt.config == nvidia_config("tiny32")
    assert ckpt.format == "nvidia-pickle"
    assert ckpt.has_w_avg is True
    assert ckpt.source == str(NV_PKL)
    assert ckpt.sha256 == hashlib.sha256(NV_PKL.read_bytes()).hexdigest()
    assert ckpt.details["network"] == "G_ema"
    assert ckpt.details["class_name"] == "training.networks.Generator"


def test_nvidia_pickle_state_dict_equals_reference_weights_exactly() -> None:
    ckpt = read_checkpoint(NV_PKL)
    ref = nvidia_reference_weights()
    assert set(ckpt.state_dict) == set(ref)
    for key, value in ref.items():
        tensor = ckpt.state_dict[key]
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        np.testing.assert_array_equal(tensor.numpy(), value, err_msg=key)


def test_nvidia_pickle_keys_are_exactly_the_expected_layout() -> None:
    ckpt = read_checkpoint(NV_PKL)
    expected = expected_shapes(ckpt.config)
    assert {k: tuple(v.shape) for k, v in ckpt.state_dict.items()} == expected
    assert not any(k.endswith("resample_filter") for k in ckpt.state_dict)


def test_nvidia_pickle_network_g_is_selectable() -> None:
    ckpt = read_checkpoint(NV_PKL, network="G")
    assert ckpt.details["network"] == "G"
    assert ckpt.config == read_checkpoint(NV_PKL).config


def test_unknown_network_name_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match=r"network-snapshot\.pkl.*network must be one of"):
        read_checkpoint(NV_PKL, network="D")


# --- rosinality -----------------------------------------------------------------------------


def rosinality_raw() -> dict:
    return torch.load(ROS_PT, weights_only=True, map_location="cpu")


def test_rosinality_config_from_tensors() -> None:
    ckpt = read_checkpoint(ROS_PT)
    meta = json.loads((ROS_DIR / "config.json").read_text())
    assert ckpt.format == "rosinality"
    assert ckpt.has_w_avg is True
    assert ckpt.config == GeneratorConfig(
        z_dim=meta["style_dim"],
        w_dim=meta["style_dim"],
        img_resolution=meta["size"],
        img_channels=3,
        mapping_layers=meta["n_mlp"],
        mapping_lr_multiplier=0.01,
        channel_base=512,
        channel_max=64,
        num_fp16_res=0,
        conv_clamp=None,
    )
    for res, ch in meta["channels"].items():
        assert ckpt.config.channels_at(int(res)) == ch
    assert ckpt.config.num_ws == meta["n_latent"]


def test_rosinality_key_translation() -> None:
    raw = rosinality_raw()
    g, sd = raw["g_ema"], read_checkpoint(ROS_PT).state_dict
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(read_checkpoint(ROS_PT).config)
    pairs = {
        "mapping.fc0.weight": g["style.1.weight"],
        "mapping.fc7.bias": g["style.8.bias"],
        "mapping.w_avg": raw["latent_avg"],
        "synthesis.b4.const": g["input.input"][0],
        "synthesis.b4.conv1.weight": g["conv1.conv.weight"][0],
        "synthesis.b4.conv1.noise_const": g["noises.noise_0"][0, 0],
        "synthesis.b4.conv1.noise_strength": g["conv1.noise.weight"][0],
        "synthesis.b4.torgb.bias": g["to_rgb1.bias"].flatten(),
        "synthesis.b8.conv0.weight": g["convs.0.conv.weight"][0],
        "synthesis.b8.conv0.affine.weight": g["convs.0.conv.modulation.weight"],
        "synthesis.b8.conv0.affine.bias": g["convs.0.conv.modulation.bias"],
        "synthesis.b8.conv0.bias": g["convs.0.activate.bias"],
        "synthesis.b8.conv0.noise_const": g["noises.noise_1"][0, 0],
        "synthesis.b8.conv1.noise_const": g["noises.noise_2"][0, 0],
        "synthesis.b16.conv1.weight": g["convs.3.conv.weight"][0],
        "synthesis.b16.torgb.weight": g["to_rgbs.1.conv.weight"][0],
        "synthesis.b16.torgb.bias": g["to_rgbs.1.bias"].flatten(),
        "synthesis.b32.conv1.noise_const": g["noises.noise_6"][0, 0],
    }
    for key, value in pairs.items():
        assert torch.equal(sd[key], value), key
    assert sd["synthesis.b4.conv1.noise_strength"].shape == ()


def test_rosinality_training_checkpoint_estimates_w_avg(tmp_path: Path) -> None:
    sd = rosinality_raw()["g_ema"]
    path = tmp_path / "000100.pt"
    torch.save(
        {
            "g": sd,
            "d": {},
            "g_ema": sd,
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
            "d_optim": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(size=32, latent=32, n_mlp=8, channel_multiplier=2, path="data/ffhq"),
            "ada_aug_p": 0.0,
        },
        path,
    )
    ckpt = read_checkpoint(path)
    assert ckpt.format == "rosinality" and ckpt.has_w_avg is False
    assert ckpt.config == read_checkpoint(ROS_PT).config

    # The estimate is the mean mapping output over the documented seeded z; check it with the model.
    from lbrgm_fast.model import Generator

    gen = Generator(ckpt.config)
    gen.load_state_dict(ckpt.state_dict)
    z = torch.randn(W_AVG_SAMPLES, ckpt.config.z_dim, generator=torch.Generator().manual_seed(W_AVG_SEED))
    with torch.no_grad():
        mean_w = gen.mapping(z)[:, 0].mean(dim=0)
    assert rel_err(ckpt.state_dict["mapping.w_avg"], mean_w.numpy()) < 1e-5
    # Same file read twice gives the same estimate (reproducible restorations).
    assert torch.equal(read_checkpoint(path).state_dict["mapping.w_avg"], ckpt.state_dict["mapping.w_avg"])
    # network="G" takes 'g' and never borrows g_ema's latent_avg.
    assert read_checkpoint(path, network="G").details["network"] == "g"


def test_rosinality_legacy_torch_save_and_bare_state_dict(tmp_path: Path) -> None:
    raw = rosinality_raw()
    legacy = tmp_path / "legacy.pt"
    torch.save(raw, legacy, _use_new_zipfile_serialization=False)
    assert_same_checkpoint(read_checkpoint(legacy), read_checkpoint(ROS_PT))

    bare = tmp_path / "bare.pt"
    torch.save(raw["g_ema"], bare)
    ckpt = read_checkpoint(bare)
    assert ckpt.has_w_avg is False and ckpt.details["network"] == "state_dict"


def test_rosinality_without_noise_buffers_generates_them_reproducibly(tmp_path: Path) -> None:
    sd = {k: v for k, v in rosinality_raw()["g_ema"].items() if not k.startswith("noises.")}
    path = tmp_path / "old.pt"
    torch.save({"g_ema": sd, "latent_avg": rosinality_raw()["latent_avg"]}, path)
    a, b = read_checkpoint(path), read_checkpoint(path)
    assert a.details["noise_buffers"].startswith("generated")
    assert a.state_dict["synthesis.b32.conv1.noise_const"].shape == (32, 32)
    assert torch.equal(a.state_dict["synthesis.b8.conv0.noise_const"], b.state_dict["synthesis.b8.conv0.noise_const"])


def test_solve_channels() -> None:
    assert solve_channels({4: 64, 8: 64, 16: 32, 32: 16}, "x") == (512, 64)
    official = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert solve_channels(official, "x") == (32768, 512)
    base, cmax = solve_channels({4: 512, 8: 512, 16: 512}, "x")
    assert all(min(base // r, cmax) == 512 for r in (4, 8, 16))
    with pytest.raises(CheckpointError, match="no channel_base/channel_max pair"):
        solve_channels({4: 64, 8: 48, 16: 40}, "x.pt")


# --- lbrgm format ---------------------------------------------------------------------------


def test_round_trip_nvidia_to_lbrgm(tmp_path: Path) -> None:
    original = read_checkpoint(NV_PKL)
    out = tmp_path / "tiny32.lbrgm"
    save_lbrgm(original, out)
    again = read_checkpoint(out)
    assert again.format == "lbrgm"
    assert_same_checkpoint(original, again)
    assert again.has_w_avg is True
    assert again.details["source_sha256"] == original.sha256
    assert again.details["source_format"] == "nvidia-pickle"
    assert again.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    # Re-saving an lbrgm file keeps pointing at the original source.
    out2 = tmp_path / "copy.lbrgm"
    save_lbrgm(again, out2)
    assert read_checkpoint(out2).details["source_sha256"] == original.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.lbrgm", "tiny32.lbrgm"]  # no temp files left


def test_round_trip_keeps_estimated_w_avg_flag(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(rosinality_raw()["g_ema"], bare)
    ckpt = convert(bare, tmp_path / "bare.lbrgm")
    again = read_checkpoint(tmp_path / "bare.lbrgm")
    assert again.has_w_avg is False and again.details["source_format"] == "rosinality"
    assert_same_checkpoint(ckpt, again)


def test_save_lbrgm_overwrites_atomically_and_refuses_bad_state(tmp_path: Path) -> None:
    ckpt = read_checkpoint(NV_PKL)
    out = tmp_path / "g.lbrgm"
    out.write_bytes(b"old content")
    save_lbrgm(ckpt, out)
    assert read_checkpoint(out).config == ckpt.config

    broken = Checkpoint(
        config=ckpt.config,
        state_dict={k: v for k, v in ckpt.state_dict.items() if k != "mapping.fc0.bias"},
        format=ckpt.format,
        sha256=ckpt.sha256,
        has_w_avg=True,
        source=ckpt.source,
    )
    with pytest.raises(CheckpointError, match="missing mapping.fc0.bias"):
        save_lbrgm(broken, tmp_path / "broken.lbrgm")
    assert not (tmp_path / "broken.lbrgm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.lbrgm"]


def test_save_lbrgm_into_missing_folder_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_lbrgm(read_checkpoint(NV_PKL), tmp_path / "no" / "such" / "dir" / "g.lbrgm")


# --- format detection by content --------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".txt", ""])
def test_format_is_detected_from_content_not_name(tmp_path: Path, suffix: str) -> None:
    lbrgm = tmp_path / "real.lbrgm"
    save_lbrgm(read_checkpoint(NV_PKL), lbrgm)
    for original, fmt in [(NV_PKL, "nvidia-pickle"), (ROS_PT, "rosinality"), (lbrgm, "lbrgm")]:
        renamed = tmp_path / f"renamed-{fmt}{suffix}"
        shutil.copyfile(original, renamed)
        ckpt = read_checkpoint(renamed)
        assert ckpt.format == fmt
        assert_same_checkpoint(ckpt, read_checkpoint(original))


# --- generator parity (needs lbrgm_fast.model) -------------------------------------------------


def test_expected_layout_equals_model_state_dict() -> None:
    from lbrgm_fast.model import Generator

    configs = [
        read_checkpoint(NV_PKL).config,
        read_checkpoint(ROS_PT).config,
        nvidia_config("ffhqlike64"),
    ]
    for config in configs:
        model_shapes = {k: tuple(v.shape) for k, v in Generator(config).state_dict().items()}
        assert model_shapes == expected_shapes(config)


def test_load_generator_nvidia_reproduces_reference_images() -> None:
    gen = load_generator(NV_PKL)
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    io = np.load(NV_DIR / "io.npz")
    with torch.no_grad():
        img = gen.synthesis(torch.from_numpy(io["w_plus"]), noise_mode="const")
        ws = gen.mapping(torch.from_numpy(io["z"]))
    assert rel_err(img, io["img_const"]) < 1e-5
    assert rel_err(ws, io["ws"]) < 1e-5


def test_load_generator_rosinality_reproduces_reference_images() -> None:
    gen = load_generator(ROS_PT)
    io = np.load(ROS_DIR / "io.npz")
    with torch.no_grad():
        img = gen.synthesis(torch.from_numpy(io["w_plus"]), noise_mode="const")
        img_z = gen(torch.from_numpy(io["z"]), noise_mode="const")
        img_psi = gen(torch.from_numpy(io["z"]), truncation_psi=0.7, noise_mode="const")
    assert rel_err(img, io["img_wplus"]) < 1e-5
    assert rel_err(img_z, io["img_z"]) < 1e-5
    assert rel_err(img_psi, io["img_psi07"]) < 1e-5  # latent_avg became mapping.w_avg


def test_load_generator_from_lbrgm_matches_source(tmp_path: Path) -> None:
    out = tmp_path / "g.lbrgm"
    convert(NV_PKL, out)
    io = np.load(NV_DIR / "io.npz")
    with torch.no_grad():
        img = load_generator(out).synthesis(torch.from_numpy(io["w_plus"]), noise_mode="const")
    assert rel_err(img, io["img_const"]) < 1e-5
