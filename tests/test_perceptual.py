"""φ (VGG16Features) against the lpips package itself, its calibration and fp32 island, the
LPIPS(alex) monitor, and finding / reading weight files.

No pretrained backbone exists offline, so every comparison uses one random torchvision backbone
loaded into both our module and lpips's (whose lin weights are the real ones in both)."""

from __future__ import annotations

import urllib.error

import lpips
import pytest
import torch
import torch.nn.functional as F
import torchvision

from lbrgm_fast import weights
from lbrgm_fast.errors import UserError, WeightsNotFoundError
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.weights import load_state_dict_file, resolve_weights

from torchvision_weights import lpips_reference


def seeded_torchvision(name: str, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return getattr(torchvision.models, name)(weights=None).eval()


@pytest.fixture(scope="module")
def tv_vgg() -> torch.nn.Module:
    return seeded_torchvision("vgg16", 0)


@pytest.fixture(scope="module")
def phi(tv_vgg) -> VGG16Features:
    return VGG16Features.from_torchvision_state_dict(tv_vgg.state_dict())


@pytest.fixture(scope="module")
def lpips_vgg(tv_vgg) -> lpips.LPIPS:
    return lpips_reference("vgg", tv_vgg.features)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(99)


def images(rng: torch.Generator, batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=rng) * 2 - 1


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


# -- VGG16Features vs lpips ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair256(phi, lpips_vgg):
    """One pair of 256 px images with our features and lpips's score, computed once
    (a VGG16 forward at 256 px takes ~1 s on the 2-core CI machine)."""
    rng = torch.Generator().manual_seed(7)
    x, y = images(rng, 1, 256), images(rng, 1, 256)
    with torch.no_grad():
        return x, y, phi.features(x), phi.features(y), lpips_vgg(x, y).reshape(-1)


def test_distance_equals_lpips_vgg_at_256(phi, pair256) -> None:
    _, _, fx, fy, ref = pair256
    ours = phi.feature_distance(fx, fy)
    assert ours.shape == (1,) and ours.dtype == torch.float32
    assert rel_err(ours, ref) < 1e-5
    assert float(ref) > 0.01  # not vacuous
    assert float(phi.feature_distance(fx, fx)) == 0.0


def test_distance_equals_lpips_vgg_for_low_res_input(phi, lpips_vgg, rng) -> None:
    # A 64 px observation is area-resized (= pixel repetition) to 256 before φ, as NVIDIA does.
    x, y = images(rng, 1, 64), images(rng, 1, 64)
    with torch.no_grad():
        ours = phi.distance(x, y)
        up_x, up_y = (F.interpolate(t, size=256, mode="area") for t in (x, y))
        ref = lpips_vgg(up_x, up_y)
    assert torch.equal(up_x, x.repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert rel_err(ours, ref.reshape(-1)) < 1e-5


def test_num_elements_is_nvidias_vector_length(phi, pair256) -> None:
    assert phi.num_elements == 7_995_392
    assert VGG16Features.random(0, resolution=32).num_elements == 124_928  # the value a user printed
    feats = pair256[2]
    assert sum(f.numel() for f in feats) == phi.num_elements
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 256, 256), (128, 128, 128), (256, 64, 64), (512, 32, 32), (512, 16, 16)
    ]


def test_perceptual_loss_is_mean_over_vector(phi, pair256) -> None:
    x, y, fx, fy, ref = pair256
    flat = torch.cat([f.flatten(1) for f in fx], 1) - torch.cat([f.flatten(1) for f in fy], 1)
    with torch.no_grad():
        loss = phi.perceptual_loss(x, y)
    # The mean of squared differences over NVIDIA's flat vector, computed independently...
    assert torch.allclose(loss, flat.square().mean(dim=1), rtol=1e-5)
    # ... is LPIPS-VGG / D.
    assert rel_err(loss, ref / 7_995_392) < 1e-5


def test_feature_distance_broadcasts_one_target(rng) -> None:
    small = VGG16Features.random(0, resolution=32)
    x, y = images(rng, 2, 32), images(rng, 1, 32)
    with torch.no_grad():
        d = small.feature_distance(small.features(x), small.features(y))
        assert torch.allclose(d, small.distance(x, y.expand(2, -1, -1, -1)))


def test_bf16_autocast_close_to_fp32_with_fp32_normalisation(rng) -> None:
    # Resolution 32: bf16 convolutions are very slow on CPUs without avx512_bf16.
    small = VGG16Features.random(1, resolution=32)
    x, y = images(rng, 1, 32), images(rng, 1, 32)
    with torch.no_grad():
        fp32 = small.distance(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = small.distance(x, y)
            taps = small.normalized_taps(x)
            feats = small.features(x)
    # Stated tolerance: 1 % relative (measured ~1e-4 on this backbone).
    assert rel_err(bf16, fp32) < 1e-2
    assert bf16.dtype == torch.float32 and all(f.dtype == torch.float32 for f in feats)
    # Normalised in fp32: every position has unit norm to fp32 precision (bf16 would be ~1e-3 off).
    for t in taps:
        assert t.dtype == torch.float32
        norms = t.square().sum(dim=1).sqrt()
        alive = norms > 0.5  # positions where a ReLU map is all-zero stay zero
        assert alive.float().mean() > 0.9
        assert torch.allclose(norms[alive], torch.ones_like(norms[alive]), atol=1e-5)
    # And the convolutions did run in bf16 (otherwise this test proves nothing about autocast).
    assert not torch.equal(bf16, fp32)


def test_gradient_reaches_the_input(rng) -> None:
    small = VGG16Features.random(2, resolution=32)
    x = images(rng, 1, 32).requires_grad_(True)
    small.perceptual_loss(x, images(rng, 1, 32)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in small.parameters())


def test_features_only_state_dicts_load_the_same(phi, tv_vgg) -> None:
    full = tv_vgg.state_dict()
    prefixed = {k: v for k, v in full.items() if k.startswith("features.")}
    bare = tv_vgg.features.state_dict()
    for sd in (prefixed, bare):
        other = VGG16Features.from_torchvision_state_dict(sd)
        for (k, a), b in zip(phi.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), k
    assert torch.equal(phi.layers[28].weight, tv_vgg.features[28].weight)


def test_bad_vgg_state_dicts(tv_vgg) -> None:
    sd = {k: v for k, v in tv_vgg.state_dict().items() if k.startswith("features.")}
    missing = {k: v for k, v in sd.items() if k != "features.28.bias"}
    with pytest.raises(UserError, match="'features.28.bias'"):
        VGG16Features.from_torchvision_state_dict(missing)
    odd = dict(sd, **{"features.5.weight": torch.zeros(128, 64, 1, 1)})
    msg = r"'features.5.weight' is \[128, 64, 1, 1\], expected \[128, 64, 3, 3\]"
    with pytest.raises(UserError, match=msg):
        VGG16Features.from_torchvision_state_dict(odd)
    with pytest.raises(UserError, match="state dict"):
        VGG16Features.from_torchvision_state_dict([1, 2])  # type: ignore[arg-type]
    # An AlexNet file given as VGG16: the first mismatch is named.
    alex = seeded_torchvision("alexnet", 0).state_dict()
    with pytest.raises(UserError, match="'features.0.weight'"):
        VGG16Features.from_torchvision_state_dict(alex)


def test_random_backbone_is_seeded() -> None:
    a, b, c = VGG16Features.random(5, 32), VGG16Features.random(5, 32), VGG16Features.random(6, 32)
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


@pytest.mark.slow
def test_vgg_features_export(rng) -> None:
    small = VGG16Features.random(0, resolution=32)
    x, y = images(rng, 1, 32), images(rng, 1, 32)

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.phi = small

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.phi.perceptual_loss(a, b)

    ep = torch.export.export(Loss(), (x, y))
    assert torch.allclose(ep.module()(x, y), small.perceptual_loss(x, y), rtol=1e-6)


# -- LPIPS(alex) monitor -----------------------------------------------------------------------


def test_lpips_alex_equals_lpips_package(rng) -> None:
    tv_alex = seeded_torchvision("alexnet", 3)
    ours = LpipsAlex.from_torchvision_state_dict(tv_alex.state_dict())
    ref = lpips_reference("alex", tv_alex.features)
    x, y = images(rng, 2, 64), images(rng, 2, 64)
    with torch.no_grad():
        expected = ref(x, y).reshape(-1)
    got = ours(x, y)
    assert got.shape == (2,)
    assert rel_err(got, expected) < 1e-5
    # A different backbone gives a different score, so the weights really were loaded.
    assert rel_err(LpipsAlex.random(0)(x, y), expected) > 1e-3


def test_lpips_alex_random_is_seeded(rng) -> None:
    x, y = images(rng, 1, 64), images(rng, 1, 64)
    assert torch.equal(LpipsAlex.random(4)(x, y), LpipsAlex.random(4)(x, y))
    with pytest.raises(UserError, match="AlexNet state dict has no 'features.10.weight'"):
        LpipsAlex.from_torchvision_state_dict({"features.0.weight": torch.zeros(64, 3, 11, 11),
                                               "features.0.bias": torch.zeros(64),
                                               "features.3.weight": torch.zeros(192, 64, 5, 5),
                                               "features.3.bias": torch.zeros(192),
                                               "features.6.weight": torch.zeros(384, 192, 3, 3),
                                               "features.6.bias": torch.zeros(384),
                                               "features.8.weight": torch.zeros(256, 384, 3, 3),
                                               "features.8.bias": torch.zeros(256)})


# -- weights -------------------------------------------------------------------------------------


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def no_network(*args, **kwargs):
    raise AssertionError("the test tried to download")


def test_explicit_missing_path(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        resolve_weights("vgg16", tmp_path / "nope.pth")


def test_explicit_path_found(tmp_path) -> None:
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    assert resolve_weights("alexnet", str(f)) == f


def test_no_download_names_cache_path_and_option(hub_dir, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = hub_dir / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("vgg16", download=False)
    assert str(expected) in str(info.value) and "--vgg16 FILE" in str(info.value)
    assert "\n" not in str(info.value)


def test_cached_file_is_found(hub_dir, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_weights("alexnet", download=False) == cached
    assert resolve_weights("alexnet") == cached


def test_offline_download_becomes_clear_error(hub_dir, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    msg = "could not be downloaded.*alexnet-owt-7be5be79.pth.*--alexnet FILE"
    with pytest.raises(WeightsNotFoundError, match=msg):
        resolve_weights("alexnet")


def test_download_checks_hash_prefix(hub_dir, monkeypatch) -> None:
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        open(dst, "wb").write(b"x")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = resolve_weights("vgg16")
    assert path == hub_dir / "checkpoints" / "vgg16-397923af.pth" and path.is_file()
    assert calls == [("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af")]


def test_unknown_kind() -> None:
    with pytest.raises(UserError, match="vgg16, alexnet"):
        resolve_weights("resnet")  # type: ignore[arg-type]


def test_load_state_dict_file(tmp_path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"a": torch.ones(2)}, good)
    assert torch.equal(load_state_dict_file(good)["a"], torch.ones(2))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[:40])
    with pytest.raises(UserError, match="corrupt.pth is not a readable"):
        load_state_dict_file(corrupt)
    not_dict = tmp_path / "list.pth"
    torch.save([torch.ones(1)], not_dict)
    with pytest.raises(UserError, match="not a state dict"):
        load_state_dict_file(not_dict)
    pickled_obj = tmp_path / "obj.pth"
    torch.save(WeightsNotFoundError("x"), pickled_obj)  # an arbitrary object: refused
    with pytest.raises(UserError, match="obj.pth is not a readable"):
        load_state_dict_file(pickled_obj)
    with pytest.raises(WeightsNotFoundError):
        load_state_dict_file(tmp_path / "absent.pth")


def test_pretrained_alexnet_from_hub_cache(hub_dir, monkeypatch, rng) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    tv_alex = seeded_torchvision("alexnet", 8)
    cached = hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    torch.save(tv_alex.features.state_dict(), cached)  # features only keeps the file small
    x, y = images(rng, 1, 64), images(rng, 1, 64)
    assert torch.equal(LpipsAlex.pretrained()(x, y),
                       LpipsAlex.from_torchvision_state_dict(tv_alex.state_dict())(x, y))


def test_pretrained_vgg_wiring(hub_dir, monkeypatch, tv_vgg, phi) -> None:
    # A real 528 MB file is out of reach offline: place a stub in the cache and serve the
    # random backbone's state dict for it, checking pretrained() asks for the cached file.
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = hub_dir / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stub")
    seen = []

    def fake_load(path):
        seen.append(path)
        return tv_vgg.state_dict()

    monkeypatch.setattr(weights, "load_state_dict_file", fake_load)
    loaded = VGG16Features.pretrained(resolution=256)
    assert seen == [cached]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), phi.state_dict().values()))


def test_pretrained_warns_when_the_file_is_not_torchvisions(weights: dict[str, str]) -> None:
    # The library's own loaders say what the CLI says: these numbers are not the published LPIPS.
    with pytest.warns(UserWarning, match="vgg16 weights .* are not torchvision's vgg16-397923af.pth"):
        VGG16Features.pretrained(weights["vgg16"], download=False)
    with pytest.warns(UserWarning, match="alexnet weights .* are not torchvision's alexnet-owt-7be5be79.pth"):
        LpipsAlex.pretrained(weights["alexnet"], download=False)
