"""Forward operators: preset geometry against the BRGM table, mask files, random masks,
super-resolution kernels, composition and the size checks users hit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lbrgm_fast.errors import ImageError, UserError
from lbrgm_fast.operators import (
    MASK_PRESETS,
    Composition,
    Identity,
    Inpainting,
    SuperResolution,
    check_observation,
    infer_factor,
)

# REFERENCE §3, typed in again here (not imported) so a typo in MASK_PRESETS is caught:
# name -> removed (rows, cols), inclusive; None = all.
TABLE = {
    "right-half": (None, (510, 1023)),
    "left-half": (None, (0, 509)),
    "bar": ((185, 839), (515, 746)),
    "top-right": ((0, 512), (510, 1023)),
    "mouth": ((616, 867), (286, 750)),
    "bottom-half": ((500, 1023), None),
}


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def removed(op: Inpainting) -> torch.Tensor:
    return op.mask[0, 0] < 0.5


def test_presets_are_the_seven_brgm_masks() -> None:
    assert set(MASK_PRESETS) == set(TABLE) | {"eyes"}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_preset_matches_table_at_1024(name: str) -> None:
    rows, cols = TABLE[name]
    r0, r1 = rows if rows else (0, 1023)
    c0, c1 = cols if cols else (0, 1023)
    miss = removed(Inpainting.from_preset(name, 1024))
    expected = torch.zeros(1024, 1024, dtype=torch.bool)
    expected[r0 : r1 + 1, c0 : c1 + 1] = True
    assert int(miss.sum()) == (r1 - r0 + 1) * (c1 - c0 + 1)
    assert torch.equal(miss, expected)
    # Boundary rows/cols: first/last removed ones are removed, their outer neighbours are kept.
    assert miss[r0, c0] and miss[r1, c1] and miss[r0, c1] and miss[r1, c0]
    if r0 > 0:
        assert not miss[r0 - 1, c0:c1 + 1].any()
    if r1 < 1023:
        assert not miss[r1 + 1, c0:c1 + 1].any()
    if c0 > 0:
        assert not miss[r0:r1 + 1, c0 - 1].any()
    if c1 < 1023:
        assert not miss[r0:r1 + 1, c1 + 1].any()


def test_eyes_preset_is_two_squares_in_the_table_box() -> None:
    miss = removed(Inpainting.from_preset("eyes", 1024))
    rows = torch.nonzero(miss.any(dim=1)).flatten()
    cols = torch.nonzero(miss.any(dim=0)).flatten()
    assert (int(rows.min()), int(rows.max())) == (411, 584)
    assert (int(cols.min()), int(cols.max())) == (276, 725)
    # Two separate square blocks of 174 x 174, each filled completely.
    col_runs = np.flatnonzero(np.diff(cols.numpy()) > 1)
    assert len(col_runs) == 1
    left = cols[: col_runs[0] + 1]
    right = cols[col_runs[0] + 1 :]
    assert len(left) == len(right) == 174 == len(rows)
    assert miss[411:585][:, left].all() and miss[411:585][:, right].all()
    assert int(miss.sum()) == 2 * 174 * 174
    # The published 5.6 % holds at 256 px (two 43 x 43 squares would give 5.64 %).
    assert abs(Inpainting.from_preset("eyes", 256).missing_fraction - 0.056) < 0.003


@pytest.mark.parametrize("resolution", [256, 64])
@pytest.mark.parametrize("name", sorted(MASK_PRESETS))
def test_scaled_presets_keep_size_and_fraction(name: str, resolution: int) -> None:
    op = Inpainting.from_preset(name, resolution)
    assert op.mask.shape == (1, 1, resolution, resolution)
    frac_1024 = Inpainting.from_preset(name, 1024).missing_fraction
    # Edge rounding moves each edge by at most half a pixel: per rectangle side the error is
    # at most 1 px, so the fraction moves by at most ~ (perimeter in px) / resolution^2.
    tolerance = 4 * 2 / resolution
    assert abs(op.missing_fraction - frac_1024) < tolerance


@pytest.mark.parametrize("resolution", [1024, 256, 64, 32])
def test_half_presets_stay_complementary(resolution: int) -> None:
    left = removed(Inpainting.from_preset("left-half", resolution))
    right = removed(Inpainting.from_preset("right-half", resolution))
    assert not (left & right).any() and (left | right).all()


def test_preset_at_256_exact_edges() -> None:
    # bar rows 185-839 -> [46.25, 210) -> rows 46..209; cols 515-746 -> [128.75, 186.75) -> 129..186
    miss = removed(Inpainting.from_preset("bar", 256))
    rows = torch.nonzero(miss.any(dim=1)).flatten()
    cols = torch.nonzero(miss.any(dim=0)).flatten()
    assert (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) == (46, 209, 129, 186)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(UserError, match="right-half.*bottom-half"):
        Inpainting.from_preset("nose", 256)


def test_inpainting_applies_mask(rng: torch.Generator) -> None:
    op = Inpainting.from_preset("mouth", 64)
    x = torch.randn(2, 3, 64, 64, generator=rng)
    y = op(x)
    keep = op.mask[0, 0] > 0.5
    assert torch.equal(y[:, :, keep], x[:, :, keep])
    assert (y[:, :, ~keep] == 0).all()
    assert op.A(x.bfloat16()).dtype == torch.bfloat16


def test_inpainting_fill_sets_the_hole_and_keeps_the_rest(rng: torch.Generator) -> None:
    """The L-BRGM authors' operator fills the hole with 1 (0–255 scale); the fill passes
    through compositions and leaves operators without a hole alone."""
    op = Inpainting.from_preset("eyes", 64)
    filled = op.with_fill(1.0)
    x = torch.rand(2, 3, 64, 64, generator=rng) * 255
    keep = op.mask[0, 0] > 0.5
    assert torch.equal(filled(x)[:, :, keep], x[:, :, keep])
    assert (filled(x)[:, :, ~keep] == 1.0).all() and op.fill == 0.0 and filled.fill == 1.0
    assert "missing pixels = 1" in filled.describe()
    down = SuperResolution(4)
    assert down.with_fill(1.0) is down
    assert torch.equal((down * op).with_fill(1.0)(x), down(filled(x)))


def write_png(path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_mask_file_round_trip(tmp_path) -> None:
    grey = np.full((64, 64), 255, dtype=np.uint8)
    grey[10:20, 30:50] = 0  # darkest = missing
    grey[40:42, :] = 128  # any other value, even grey, is kept
    path = tmp_path / "mask.png"
    write_png(path, grey)
    op = Inpainting.from_file(path, resolution=64)
    expected_missing = torch.from_numpy(grey == 0)
    assert torch.equal(removed(op), expected_missing)
    inv = Inpainting.from_file(path, resolution=64, invert=True)
    assert torch.equal(removed(inv), ~expected_missing)
    # RGB files are read as grey the same way.
    rgb = tmp_path / "mask_rgb.png"
    write_png(rgb, np.stack([grey] * 3, axis=-1))
    assert torch.equal(Inpainting.from_file(rgb, 64).mask, op.mask)


def test_mask_file_darkest_need_not_be_black(tmp_path) -> None:
    grey = np.full((32, 32), 200, dtype=np.uint8)
    grey[:5, :5] = 50
    path = tmp_path / "m.png"
    write_png(path, grey)
    assert int(removed(Inpainting.from_file(path)).sum()) == 25


def test_mask_file_wrong_size_names_both_sizes(tmp_path) -> None:
    grey = np.full((48, 64), 255, dtype=np.uint8)
    grey[:10] = 0
    path = tmp_path / "m.png"
    write_png(path, grey)
    with pytest.raises(ImageError, match="64x48.*128x128"):
        Inpainting.from_file(path, resolution=128)


@pytest.mark.parametrize("value", [0, 255, 7])
def test_mask_file_uniform_is_an_error(tmp_path, value: int) -> None:
    path = tmp_path / "m.png"
    write_png(path, np.full((16, 16), value))
    for invert in (False, True):
        with pytest.raises(ImageError, match=f"uniform \\(every pixel {value}\\)"):
            Inpainting.from_file(path, 16, invert=invert)


def test_mask_file_missing_or_garbage(tmp_path) -> None:
    with pytest.raises(ImageError, match="not found"):
        Inpainting.from_file(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot read"):
        Inpainting.from_file(bad)


def test_mask_tensor_validation() -> None:
    with pytest.raises(ImageError, match="no missing"):
        Inpainting(torch.ones(8, 8))
    with pytest.raises(ImageError, match="every pixel"):
        Inpainting(torch.zeros(8, 8))
    with pytest.raises(ImageError, match=r"\[1, 1, H, W\]"):
        Inpainting(torch.ones(3, 8, 8))
    with pytest.raises(ImageError, match="image is 32x32 but the mask is 16x16"):
        Inpainting.from_preset("eyes", 16).A(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("kind", ["box", "brush"])
def test_random_masks_reproducible(kind: str) -> None:
    a = Inpainting.random(64, seed=3, kind=kind)
    b = Inpainting.random(64, seed=3, kind=kind)
    c = Inpainting.random(64, seed=4, kind=kind)
    assert torch.equal(a.mask, b.mask) and a.params == b.params
    assert not torch.equal(a.mask, c.mask)
    assert a.params["kind"] == kind and a.params["seed"] == 3
    assert 0 < a.missing_fraction < 1
    # The global RNG is untouched.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Inpainting.random(64, seed=5, kind=kind)
    assert torch.equal(torch.rand(3), expected)


def test_random_box_params_describe_the_mask() -> None:
    op = Inpainting.random(128, seed=11, kind="box", num_boxes=2)
    rebuilt = torch.ones(128, 128)
    for r0, r1, c0, c1 in op.params["boxes"]:
        assert 0.25 * 128 - 1 <= r1 - r0 <= 0.5 * 128 + 1
        rebuilt[r0:r1, c0:c1] = 0
    assert torch.equal(rebuilt, op.mask[0, 0])


def test_random_unknown_kind() -> None:
    with pytest.raises(UserError, match="box, brush"):
        Inpainting.random(64, seed=0, kind="blob")  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel", ["bicubic", "area", "bicubic-aa"])
@pytest.mark.parametrize("factor", [2, 4, 16])
def test_superres_output_size(kernel: str, factor: int, rng: torch.Generator) -> None:
    x = torch.randn(2, 3, 64, 64, generator=rng)
    y = SuperResolution(factor, kernel)(x)
    assert y.shape == (2, 3, 64 // factor, 64 // factor)
    assert SuperResolution(factor, kernel).observation_size(1024) == (1024 // factor,) * 2
    # Every kernel preserves a constant image (weights sum to one).
    const = torch.full((1, 3, 64, 64), 0.3)
    down = SuperResolution(factor, kernel)(const)
    assert torch.allclose(down, torch.full_like(down, 0.3), atol=1e-6)


def test_superres_bicubic_is_brgm_interpolate(rng: torch.Generator) -> None:
    x = torch.randn(1, 3, 64, 64, generator=rng)
    ref = F.interpolate(x, scale_factor=1 / 4, mode="bicubic", align_corners=False, antialias=False,
                        recompute_scale_factor=True)
    assert torch.equal(SuperResolution(4, "bicubic")(x), ref)


def test_superres_area_is_block_mean(rng: torch.Generator) -> None:
    x = torch.randn(1, 3, 32, 32, generator=rng)
    block_mean = x.reshape(1, 3, 8, 4, 8, 4).mean(dim=(3, 5))
    assert torch.allclose(SuperResolution(4, "area")(x), block_mean, atol=1e-6)


def test_superres_aa_differs_from_plain_bicubic(rng: torch.Generator) -> None:
    x = torch.randn(1, 3, 64, 64, generator=rng)
    # Antialiasing averages over a wider support, so it damps pixel noise far more.
    assert SuperResolution(8, "bicubic-aa")(x).std() < 0.5 * SuperResolution(8, "bicubic")(x).std()


@pytest.mark.parametrize("factor", [1, 128, 0, -2, 2.0, True])
def test_superres_bad_factor(factor) -> None:
    with pytest.raises(UserError, match="factor"):
        SuperResolution(factor)


def test_superres_factor_must_divide_resolution() -> None:
    with pytest.raises(UserError, match="3 does not divide the resolution 1024"):
        SuperResolution(3, resolution=1024)
    with pytest.raises(UserError, match="kernel"):
        SuperResolution(2, "lanczos")  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="cannot divide"):
        SuperResolution(3).A(torch.zeros(1, 3, 64, 64))


def test_composition_mask_then_downsample(rng: torch.Generator) -> None:
    mask, down = Inpainting.from_preset("bar", 64), SuperResolution(4)
    x = torch.randn(2, 3, 64, 64, generator=rng)
    expected = down(mask(x))
    assert torch.equal((down * mask)(x), expected)
    assert torch.equal(Composition(mask, down)(x), expected)
    assert (down * mask).observation_size(64) == (16, 16)
    # Order matters: downsampling first leaves a 16 px image the 64 px mask cannot take.
    with pytest.raises(ImageError):
        (mask * down)(x)
    nested = Identity() * (down * mask)
    assert len(nested.operators) == 3 and torch.equal(nested(x), expected)


def test_operators_have_no_trainable_state_and_move_with_to() -> None:
    op = SuperResolution(2) * Inpainting.from_preset("eyes", 64)
    assert list(op.parameters()) == []
    assert op.to(torch.float64).operators[0].mask.dtype == torch.float64


def test_operators_export() -> None:
    op = SuperResolution(4) * Inpainting.from_preset("eyes", 64)
    x = torch.randn(2, 3, 64, 64)
    ep = torch.export.export(op, (x,))
    assert torch.equal(ep.module()(x), op(x))


def test_check_observation_names_sizes() -> None:
    msg = "observation is 48x48 but superres x16.*at 1024 px expects 64x64"
    with pytest.raises(ImageError, match=msg):
        check_observation(SuperResolution(16), torch.zeros(1, 3, 48, 48), 1024)
    check_observation(SuperResolution(16), torch.zeros(1, 3, 64, 64), 1024)
    check_observation(Inpainting.from_preset("eyes", 256), torch.zeros(3, 256, 256), 256)
    with pytest.raises(ImageError, match="mask is 256x256 but the generator makes 1024x1024"):
        check_observation(Inpainting.from_preset("eyes", 256), torch.zeros(1, 3, 1024, 1024), 1024)
    with pytest.raises(ImageError, match="observation is 64x64 but identity at 128 px expects 128x128"):
        check_observation(Identity(), torch.zeros(1, 3, 64, 64), 128)
    with pytest.raises(ImageError, match=r"\[B, 3, H, W\]"):
        check_observation(Identity(), torch.zeros(1, 1, 64, 64), 64)


def test_infer_factor() -> None:
    assert infer_factor(64, 1024) == 16
    assert infer_factor((32, 32), 1024) == 32
    assert infer_factor(64, 256) == 4
    with pytest.raises(ImageError, match="48x48"):
        infer_factor(48, 1024)
    with pytest.raises(ImageError, match="512, 256, 128, 64, 32, 16"):
        infer_factor(8, 1024)  # factor 128 is beyond 64
    with pytest.raises(ImageError, match="square"):
        infer_factor((64, 32), 1024)
    with pytest.raises(ImageError, match="not smaller"):
        infer_factor(1024, 1024)


def test_observed_is_the_inpainting_mask_and_none_where_no_pixel_is_removed() -> None:
    # The one place that says which image pixels an operator removes (the missing region of
    # eval's hole metrics, merged.png, restart agreement and the uncertainty map).
    eyes = Inpainting.from_preset("eyes", 32)
    assert eyes.observed() is eyes.mask and eyes.observed().shape == (1, 1, 32, 32)
    assert SuperResolution(4).observed() is None and Identity().observed() is None
    assert (SuperResolution(2) * eyes).observed() is None  # a composition does not say
