"""Malicious, broken and unusual checkpoint files: each must fail clearly, and none may run code.

NVIDIA-style and TensorFlow-style pickles are crafted here with stand-in modules registered under
NVIDIA's module names, so the pickles name exactly the globals real checkpoints name.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from lbrgm_fast.checkpoints import load_generator, read_checkpoint, save_lbrgm
from lbrgm_fast.errors import CheckpointError, UnsafeCheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
NV_DIR = FIXTURES / "stylegan2-ada" / "tiny32"
NV_PKL = NV_DIR / "network-snapshot.pkl"
ROS_PT = FIXTURES / "rosinality" / "tiny32" / "checkpoint.pt"
BUFFERS = {"w_avg", "noise_const", "resample_filter"}


# --- crafting pickles that name NVIDIA's globals -----------------------------------------------


@pytest.fixture
def nvidia_modules(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Register stand-ins for torch_utils.persistence and dnnlib.tflib.network while pickling."""

    def _reconstruct_persistent_obj(meta: dict) -> None:  # pragma: no cover - only named, never run
        raise AssertionError("the loader must not call the real persistence function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]

    class Network:  # stands in for dnnlib.tflib.network.Network
        def __init__(self, state: dict) -> None:
            self._state = state

        def __getstate__(self) -> dict:
            return self._state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    network = types.ModuleType("dnnlib.tflib.network")
    network.Network = Network  # type: ignore[attr-defined]

    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
        "dnnlib.tflib.network": network,
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, Network=Network)


class Persistent:
    """Pickles like an NVIDIA persistent object: `_reconstruct_persistent_obj(meta)`."""

    def __init__(self, class_name: str, state: dict, module_src: str = "# test\n") -> None:
        self.meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name, "state": state}

    def __reduce__(self) -> tuple:
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


def module_state(params: dict, buffers: dict, children: dict, init_kwargs: dict | None = None) -> dict:
    return {
        "training": False,
        "_parameters": OrderedDict(params),
        "_buffers": OrderedDict(buffers),
        "_non_persistent_buffers_set": set(),
        "_modules": OrderedDict(children),
        "weight_gain": np.float64(0.125),  # NVIDIA modules carry numpy scalars like this
        "_init_args": (),
        "_init_kwargs": init_kwargs if init_kwargs is not None else {},
    }


def nvidia_generator(flat: dict[str, np.ndarray], init_kwargs: dict, module_src: str = "# test\n") -> Persistent:
    """A persistent-record tree whose flattened state dict is `flat` (NVIDIA key names)."""
    tree: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = torch.from_numpy(np.array(value))

    def build(node: dict, name: str, kwargs: dict | None) -> Persistent:
        params = {k: torch.nn.Parameter(v, requires_grad=False) for k, v in node.items() if isinstance(v, torch.Tensor) and k not in BUFFERS}
        buffers = {k: v for k, v in node.items() if isinstance(v, torch.Tensor) and k in BUFFERS}
        children = {k: build(v, k, None) for k, v in node.items() if isinstance(v, dict)}
        return Persistent(name, module_state(params, buffers, children, kwargs), module_src)

    return build(tree, "Generator", init_kwargs)


def reference_weights() -> dict[str, np.ndarray]:
    npz = np.load(NV_DIR / "weights.npz")
    return {k: npz[k] for k in npz.files}


def reference_init_kwargs() -> dict:
    return json.loads((NV_DIR / "init_kwargs.json").read_text())["init_kwargs"]


def write_snapshot(path: Path, generator: Any, protocol: int = 4, **extra: Any) -> Path:
    data = {"G": generator, "D": None, "G_ema": generator, "augment_pipe": None, "training_set_kwargs": {}}
    data.update(extra)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def assert_fails(path: Path, *phrases: str, error: type[Exception] = CheckpointError) -> str:
    with pytest.raises(error) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    for phrase in phrases:
        assert phrase in message, message
    return message


# --- code execution attempts ------------------------------------------------------------------


class SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class EvalCall:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (builtins.eval, (self.source,))


def test_pickle_calling_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": SystemCall(f"touch {marker}")}))
    message = assert_fails(path, "system", "not on the allow-list", error=UnsafeCheckpointError)
    assert message.startswith("refusing checkpoint")
    assert not marker.exists()


def test_pickle_calling_builtins_eval_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(EvalCall(f"open({str(marker)!r}, 'w').close()")))
    assert_fails(path, "builtins.eval", "allow-list", error=UnsafeCheckpointError)
    assert not marker.exists()


def test_persistence_module_src_is_never_executed(tmp_path: Path, nvidia_modules: Any) -> None:
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w').close()\n"
    # A complete, valid generator whose embedded source would create the marker: loads as data.
    good = write_snapshot(tmp_path / "valid-but-evil-src.pkl", nvidia_generator(reference_weights(), reference_init_kwargs(), payload))
    assert read_checkpoint(good).format == "nvidia-pickle"
    # A bare persistent object with the same source and nothing else: a clear error.
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps({"G_ema": Persistent("Generator", {}, payload)}))
    assert_fails(bare, "_init_kwargs")
    assert not marker.exists()


def test_tensor_storage_bytes_with_malicious_global_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    import io

    inner = io.BytesIO()
    torch.save(SystemCall(f"touch {marker}"), inner, _use_new_zipfile_serialization=False)

    class StorageBytes:
        def __reduce__(self) -> tuple:
            return (torch.storage._load_from_bytes, (inner.getvalue(),))

    path = tmp_path / "evil-storage.pkl"
    path.write_bytes(pickle.dumps({"G_ema": StorageBytes()}))
    assert_fails(path, "system", "allow-list", error=UnsafeCheckpointError)
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_save_with_malicious_global_is_refused(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": SystemCall(f"touch {marker}"), "latent_avg": torch.zeros(4)}, path, _use_new_zipfile_serialization=zipped)
    assert_fails(path, "system", "allow-list", error=UnsafeCheckpointError)
    assert not marker.exists()


def test_numpy_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"G_ema": np.array([1, "x"], dtype=object)}))
    assert_fails(path, "object")


class CraftedDtype:
    """Pickles as numpy.dtype(code, False, copy) followed by an arbitrary dtype state."""

    def __init__(self, code: str, copy: bool, state: tuple) -> None:
        self.args, self.state = (code, False, copy), state

    def __reduce__(self) -> tuple:
        return (np.dtype, self.args, self.state)


class CraftedArray:
    """Pickles as numpy's ndarray reconstruction with a chosen dtype and raw bytes."""

    def __init__(self, dtype: Any, raw: bytes) -> None:
        self.dtype, self.raw = dtype, raw

    def __reduce__(self) -> tuple:
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), self.dtype, False, self.raw))


def test_dtype_state_claiming_object_references_is_refused(tmp_path: Path) -> None:
    # A void dtype whose pickled flags say it holds Python objects: raw bytes would become pointers.
    fake_object_dtype = CraftedDtype("V8", True, (3, "|", None, None, None, 8, 1, 0x19))
    path = tmp_path / "pointers.pkl"
    path.write_bytes(pickle.dumps({"G_ema": CraftedArray(fake_object_dtype, b"\x41" * 8)}, protocol=2))
    assert_fails(path, "object")


class OversizedTensor:
    """Pickles like a tensor whose size claims more elements than its storage holds."""

    def __reduce__(self) -> tuple:
        storage = torch.zeros(4).untyped_storage()
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
        return (torch._utils._rebuild_tensor_v2, (typed, 0, (1_000_000,), (1,), False, OrderedDict()))


def test_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "oversized.pkl"
    path.write_bytes(pickle.dumps({"G_ema": OversizedTensor()}))
    assert_fails(path, "reaches past its storage")


# --- broken or foreign files -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_fails(tmp_path / "nope.pkl", "no such file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.pkl").mkdir()
    assert_fails(tmp_path / "dir.pkl", "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    assert_fails(path, "empty")


def test_truncated_nvidia_pickle(tmp_path: Path) -> None:
    data = NV_PKL.read_bytes()
    path = tmp_path / "half.pkl"
    path.write_bytes(data[: len(data) // 2])
    assert_fails(path, "truncated")


def test_truncated_rosinality_zip(tmp_path: Path) -> None:
    data = ROS_PT.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    assert_fails(path, "corrupt or truncated PyTorch file")


def test_truncated_lbrgm(tmp_path: Path) -> None:
    full = tmp_path / "full.lbrgm"
    save_lbrgm(read_checkpoint(NV_PKL), full)
    path = tmp_path / "half.lbrgm"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert_fails(path, "corrupt")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_fails(path, "cannot use checkpoint")


def test_png_file(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "face.pkl"
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    assert_fails(path, "PNG image")


def test_pickle_without_generator(tmp_path: Path) -> None:
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"foo": 1, "bar": [1, 2]}))
    assert_fails(path, "no StyleGAN2 generator", "'foo'")


def test_snapshot_without_requested_network(tmp_path: Path, nvidia_modules: Any) -> None:
    gen = nvidia_generator(reference_weights(), reference_init_kwargs())
    path = tmp_path / "only-g.pkl"
    path.write_bytes(pickle.dumps({"G": gen, "D": gen}))
    assert_fails(path, "no generator 'G_ema'", "it has G")


def test_torch_file_that_is_not_a_generator(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    assert_fails(path, "not a StyleGAN2 generator checkpoint", "'model'")


def test_safetensors_without_lbrgm_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, path)
    assert_fails(path, "not an lbrgm-fast generator")


@pytest.mark.parametrize(
    ("change", "phrase"),
    [({"version": "2"}, "version '2' is not supported"), ({"config": "{oops"}, "config metadata is invalid")],
)
def test_lbrgm_with_bad_metadata(tmp_path: Path, change: dict, phrase: str) -> None:
    ckpt = read_checkpoint(NV_PKL)
    metadata = {
        "format": "lbrgm-generator",
        "version": "1",
        "config": json.dumps(ckpt.config.to_dict()),
        "source_sha256": ckpt.sha256,
        "source_format": ckpt.format,
        "has_w_avg": "true",
    } | change
    path = tmp_path / "bad.lbrgm"
    safetensors.torch.save_file(ckpt.state_dict, path, metadata=metadata)
    assert_fails(path, phrase)


# --- pickles that are not (supported) StyleGAN2 generators ---------------------------------------


def test_shapes_that_fit_no_stylegan2(tmp_path: Path, nvidia_modules: Any) -> None:
    weights = reference_weights()
    dropped = {k: v for k, v in weights.items() if k != "synthesis.b16.conv1.weight"}
    path = write_snapshot(tmp_path / "dropped.pkl", nvidia_generator(dropped, reference_init_kwargs()))
    assert_fails(path, "shapes do not fit a StyleGAN2", "missing synthesis.b16.conv1.weight")

    reshaped = dict(weights)
    reshaped["synthesis.b8.conv0.weight"] = weights["synthesis.b8.conv0.weight"].reshape(64, 64, 1, 9)
    path = write_snapshot(tmp_path / "reshaped.pkl", nvidia_generator(reshaped, reference_init_kwargs()))
    assert_fails(path, "shapes do not fit a StyleGAN2", "synthesis.b8.conv0.weight is [64, 64, 1, 9], expected [64, 64, 3, 3]")

    kwargs = reference_init_kwargs()
    kwargs["synthesis_kwargs"]["channel_max"] = 128  # the tensors say 64
    path = write_snapshot(tmp_path / "lying-kwargs.pkl", nvidia_generator(weights, kwargs))
    assert_fails(path, "shapes do not fit a StyleGAN2")


def test_stylegan3_pickle_is_refused(tmp_path: Path, nvidia_modules: Any) -> None:
    def layer() -> Persistent:
        return Persistent("SynthesisLayer", module_state({"weight": torch.nn.Parameter(torch.zeros(4, 4, 1, 1))}, {}, {}))

    synthesis = Persistent(
        "SynthesisNetwork",
        module_state({}, {}, {"input": layer(), "L0_36_512": layer(), "L1_36_512": layer(), "L14_1024_3": layer()}),
    )
    kwargs = {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 1024, "img_channels": 3,
              "mapping_kwargs": {"num_layers": 2}, "channel_base": 32768, "channel_max": 512, "magnitude_ema_beta": 0.999}
    gen = Persistent("Generator", module_state({}, {}, {"synthesis": synthesis}, kwargs))
    path = write_snapshot(tmp_path / "stylegan3-t.pkl", gen)
    assert_fails(path, "StyleGAN3 is not supported")


def test_conditional_generator_is_refused(tmp_path: Path, nvidia_modules: Any) -> None:
    weights = reference_weights()
    weights["mapping.embed.weight"] = np.zeros((32, 10), np.float32)
    weights["mapping.embed.bias"] = np.zeros(32, np.float32)
    kwargs = reference_init_kwargs() | {"c_dim": 10}
    path = write_snapshot(tmp_path / "cond.pkl", nvidia_generator(weights, kwargs))
    assert_fails(path, "conditional StyleGAN2 models (c_dim=10) are not supported")


def test_non_skip_architecture_and_other_filters_are_refused(tmp_path: Path, nvidia_modules: Any) -> None:
    kwargs = reference_init_kwargs()
    kwargs["synthesis_kwargs"]["architecture"] = "resnet"
    path = write_snapshot(tmp_path / "resnet.pkl", nvidia_generator(reference_weights(), kwargs))
    assert_fails(path, "architecture='resnet' is not supported")

    weights = reference_weights()
    weights["synthesis.b8.conv0.resample_filter"] = np.full((4, 4), 1 / 16, np.float32)
    path = write_snapshot(tmp_path / "box.pkl", nvidia_generator(weights, reference_init_kwargs()))
    assert_fails(path, "synthesis.b8.conv0.resample_filter", "[1,3,3,1]")


# --- crafted but valid NVIDIA pickles ------------------------------------------------------------


def expected_fixture_state() -> dict[str, np.ndarray]:
    return {k: v for k, v in reference_weights().items() if not k.endswith("resample_filter")}


def assert_state_is_fixture(state: dict[str, torch.Tensor]) -> None:
    expected = expected_fixture_state()
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].numpy(), value, err_msg=key)


@pytest.mark.parametrize("protocol", [2, 4])
def test_crafted_snapshot_matches_fixture(tmp_path: Path, nvidia_modules: Any, protocol: int) -> None:
    path = write_snapshot(tmp_path / "crafted.pkl", nvidia_generator(reference_weights(), reference_init_kwargs()), protocol)
    ckpt = read_checkpoint(path)
    assert ckpt.config == read_checkpoint(NV_PKL).config
    assert_state_is_fixture(ckpt.state_dict)


def test_old_numpy_core_module_name_is_accepted(tmp_path: Path, nvidia_modules: Any) -> None:
    data = pickle.dumps({"G_ema": nvidia_generator(reference_weights(), reference_init_kwargs())}, protocol=2)
    assert b"numpy._core.multiarray\n" in data  # protocol 2 names globals as text lines
    path = tmp_path / "numpy1.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert_state_is_fixture(read_checkpoint(path).state_dict)


def test_stylegan3_repo_stylegan2_uses_its_defaults(tmp_path: Path, nvidia_modules: Any) -> None:
    base = reference_init_kwargs()
    flat = {k: base[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")}
    flat |= {"channel_base": 512, "channel_max": 64, "fused_modconv_default": "inference_only"}
    path = write_snapshot(tmp_path / "sg3repo.pkl", nvidia_generator(reference_weights(), flat))
    ckpt = read_checkpoint(path)
    assert ckpt.details["class_name"] == "training.networks_stylegan2.Generator"
    assert (ckpt.config.num_fp16_res, ckpt.config.conv_clamp) == (4, 256.0)

    explicit = flat | {"num_fp16_res": 0, "conv_clamp": None}
    path = write_snapshot(tmp_path / "sg3repo-explicit.pkl", nvidia_generator(reference_weights(), explicit))
    assert (read_checkpoint(path).config.num_fp16_res, read_checkpoint(path).config.conv_clamp) == (0, None)


def test_snapshot_without_w_avg_gets_an_estimate(tmp_path: Path, nvidia_modules: Any) -> None:
    weights = {k: v for k, v in reference_weights().items() if k != "mapping.w_avg"}
    kwargs = reference_init_kwargs()
    kwargs["mapping_kwargs"]["w_avg_beta"] = None
    ckpt = read_checkpoint(write_snapshot(tmp_path / "no-wavg.pkl", nvidia_generator(weights, kwargs)))
    assert ckpt.has_w_avg is False
    assert ckpt.state_dict["mapping.w_avg"].shape == (32,)
    assert not torch.equal(ckpt.state_dict["mapping.w_avg"], torch.from_numpy(reference_weights()["mapping.w_avg"]))


# --- original TensorFlow pickles (crafted with the documented conventions) -------------------------


def tensorflow_state(flat: dict[str, np.ndarray], nvidia: Any) -> Any:
    """(G, D, Gs) TensorFlow network states holding `flat` (NVIDIA names) in TF conventions."""
    res_list = [4, 8, 16, 32]
    mapping = [(f"Dense{i}/{p}", flat[f"mapping.fc{i}.{p}"].T if p == "weight" else flat[f"mapping.fc{i}.{p}"])
               for i in range(8) for p in ("weight", "bias")]
    synthesis = [("4x4/Const/const", flat["synthesis.b4.const"][None])]

    def layer(prefix: str, scope: str, noise: int, flip: bool) -> None:
        weight = flat[f"{prefix}.weight"].transpose(2, 3, 1, 0)
        synthesis.extend([
            (f"{scope}/weight", np.ascontiguousarray(weight[::-1, ::-1] if flip else weight)),
            (f"{scope}/bias", flat[f"{prefix}.bias"]),
            (f"{scope}/noise_strength", np.array(flat[f"{prefix}.noise_strength"], np.float32)),
            (f"{scope}/mod_weight", flat[f"{prefix}.affine.weight"].T),
            (f"{scope}/mod_bias", flat[f"{prefix}.affine.bias"] - 1),
            (f"noise{noise}", flat[f"{prefix}.noise_const"][None, None]),
        ])

    for res in res_list:
        if res == 4:
            layer("synthesis.b4.conv1", "4x4/Conv", 0, False)
        else:
            log2 = int(np.log2(res))
            layer(f"synthesis.b{res}.conv0", f"{res}x{res}/Conv0_up", 2 * log2 - 5, True)
            layer(f"synthesis.b{res}.conv1", f"{res}x{res}/Conv1", 2 * log2 - 4, False)
        rgb = f"synthesis.b{res}.torgb"
        synthesis.extend([
            (f"{res}x{res}/ToRGB/weight", flat[f"{rgb}.weight"].transpose(2, 3, 1, 0)),
            (f"{res}x{res}/ToRGB/bias", flat[f"{rgb}.bias"]),
            (f"{res}x{res}/ToRGB/mod_weight", flat[f"{rgb}.affine.weight"].T),
            (f"{res}x{res}/ToRGB/mod_bias", flat[f"{rgb}.affine.bias"] - 1),
        ])

    kwargs = {"latent_size": 32, "dlatent_size": 32, "mapping_fmaps": 32, "label_size": 0, "resolution": 32,
              "num_channels": 3, "fmap_base": 256, "fmap_max": 64, "architecture": "skip", "truncation_psi": 0.5}

    def net(name: str, variables: list, components: dict) -> Any:
        return nvidia.Network({
            "version": 4, "name": name, "static_kwargs": kwargs, "components": components,
            "build_module_src": "import os\nos.system('echo never run')\n", "build_func_name": "G_main",
            "variables": variables,
        })

    def gen() -> Any:
        return net("G", [("lod", np.float32(0.0)), ("dlatent_avg", flat["mapping.w_avg"])],
                   {"mapping": net("G_mapping", mapping, {}), "synthesis": net("G_synthesis", synthesis, {})})

    return gen(), net("D", [], {}), gen()


def test_tensorflow_pickle_is_converted(tmp_path: Path, nvidia_modules: Any) -> None:
    flat = expected_fixture_state()
    path = tmp_path / "stylegan2-tf.pkl"
    path.write_bytes(pickle.dumps(tensorflow_state(flat, nvidia_modules), protocol=3))
    ckpt = read_checkpoint(path)
    assert ckpt.format == "tensorflow-pickle" and ckpt.has_w_avg
    assert ckpt.config == read_checkpoint(NV_PKL).config
    assert_state_is_fixture(ckpt.state_dict)
    io = np.load(NV_DIR / "io.npz")
    with torch.no_grad():
        img = load_generator(path).synthesis(torch.from_numpy(io["w_plus"]), noise_mode="const").numpy()
    assert np.linalg.norm(img - io["img_const"]) / np.linalg.norm(io["img_const"]) < 1e-5


def test_tensorflow_pickle_with_unknown_argument_is_refused(tmp_path: Path, nvidia_modules: Any) -> None:
    g, d, gs = tensorflow_state(expected_fixture_state(), nvidia_modules)
    gs._state["static_kwargs"] = gs._state["static_kwargs"] | {"architecture": "resnet"}
    path = tmp_path / "resnet-tf.pkl"
    path.write_bytes(pickle.dumps((g, d, gs)))
    assert_fails(path, "architecture='resnet' is not supported")
