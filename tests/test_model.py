"""The generator computes what NVIDIA's reference code computes (tests/fixtures/README.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from lbrgm_fast.kernels import (
    demodulation_coefficients,
    make_filter,
    modulated_conv2d,
    upfirdn2d,
    upsample2d,
)
from lbrgm_fast.kernels.forms import convolution_forms
from lbrgm_fast.kernels.upfirdn2d import _depthwise_fir, _sliced_fir
from reference import nvidia_generator, nvidia_io, rel_error

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.model import Generator

IMAGE_TOL = 1e-5  # fixtures README: float32 images and mapping outputs
GRAD_TOL = 2e-3  # fixtures README: gradients (leaky-ReLU kinks flip under rounding)


@pytest.fixture(params=[False, True], ids=["nonfused", "fused"])
def fused(request: pytest.FixtureRequest) -> bool:
    return request.param


def test_mapping_and_truncation_match_reference(fixture_name: str) -> None:
    G, io = nvidia_generator(fixture_name), nvidia_io(fixture_name)
    assert rel_error(G.mapping(io["z"]), io["ws"]) < IMAGE_TOL
    assert rel_error(G.mapping(io["z"], truncation_psi=0.7), io["ws_psi07"]) < IMAGE_TOL


def test_images_match_reference(fixture_name: str, fused: bool) -> None:
    G, io = nvidia_generator(fixture_name), nvidia_io(fixture_name)
    G.synthesis.fused_modconv = fused
    assert rel_error(G.synthesis(io["w_plus"], noise_mode="const"), io["img_const"]) < IMAGE_TOL
    assert rel_error(G.synthesis(io["w_plus"], noise_mode="none"), io["img_none"]) < IMAGE_TOL


def test_gradients_match_reference(fixture_name: str, fused: bool) -> None:
    G, io = nvidia_generator(fixture_name), nvidia_io(fixture_name)
    G.synthesis.fused_modconv = fused
    w_plus = io["w_plus"].clone().requires_grad_(True)
    (G.synthesis(w_plus) * io["R"]).sum().backward()
    assert rel_error(w_plus.grad, io["grad_w_plus"]) < GRAD_TOL
    z = io["z"].clone().requires_grad_(True)
    (G.synthesis(G.mapping(z)) * io["R"]).sum().backward()
    assert rel_error(z.grad, io["grad_z"]) < GRAD_TOL


def test_shape_attributes(tiny32: Generator) -> None:
    assert (tiny32.z_dim, tiny32.w_dim, tiny32.num_ws, tiny32.img_resolution) == (32, 32, 8, 32)
    assert GeneratorConfig(z_dim=512, w_dim=512, img_resolution=1024).num_ws == 18
    assert tiny32.synthesis.noise_shapes() == [(4, 4), (8, 8), (8, 8), (16, 16), (16, 16), (32, 32), (32, 32)]


def _with_noise_strength(G: Generator, value: float) -> Generator:
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.fill_(value)
    return G


def test_noise_modes_and_explicit_noise() -> None:
    # The fixtures were made with zero noise strength; give it a value so the modes differ.
    G = _with_noise_strength(nvidia_generator("tiny32"), 0.5)
    ws = nvidia_io("tiny32")["w_plus"][:2]
    const, none = G.synthesis(ws, "const"), G.synthesis(ws, "none")
    assert rel_error(const, none) > 1e-3
    layers = [m for m in G.synthesis.modules() if hasattr(m, "noise_const")]
    stored = [layer.noise_const[None, None] for layer in layers]
    assert torch.allclose(G.synthesis(ws, noise=stored), const, atol=1e-6)
    zeros = [torch.zeros(1, 1, h, w) for h, w in G.synthesis.noise_shapes()]
    assert torch.allclose(G.synthesis(ws, noise=zeros), none, atol=1e-6)
    torch.manual_seed(0)
    r1 = G.synthesis(ws, "random")
    torch.manual_seed(0)
    assert torch.equal(G.synthesis(ws, "random"), r1)
    assert rel_error(r1, const) > 1e-3


def test_noise_reaches_the_layer_of_its_index() -> None:
    """Explicit noise on layer k changes the image only through that layer (its resolution)."""
    G = _with_noise_strength(nvidia_generator("tiny32"), 1.0)
    ws = nvidia_io("tiny32")["w_plus"][:1]
    shapes = G.synthesis.noise_shapes()
    base = G.synthesis(ws, "none")
    for k, (h, w) in enumerate(shapes):
        noise = [torch.zeros(1, 1, *s) for s in shapes]
        noise[k] = torch.randn(1, 1, h, w)
        assert not torch.allclose(G.synthesis(ws, noise=noise), base)
    with pytest.raises(ValueError, match="noise tensors"):
        G.synthesis(ws, noise=[torch.zeros(1, 1, 4, 4)])


def test_bad_shapes_raise_clear_errors(tiny32: Generator) -> None:
    with pytest.raises(ValueError, match=r"ws must be \[B, 8, 32\]"):
        tiny32.synthesis(torch.zeros(1, 7, 32))
    with pytest.raises(ValueError, match=r"z must be \[B, 32\]"):
        tiny32.mapping(torch.zeros(1, 31))


def test_channels_last_gives_same_images(fixture_name: str) -> None:
    G, io = nvidia_generator(fixture_name), nvidia_io(fixture_name)
    G = G.to(memory_format=torch.channels_last)
    assert rel_error(G.synthesis(io["w_plus"]), io["img_const"]) < IMAGE_TOL


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_autocast_low_precision_stays_close(dtype: torch.dtype, tol: float) -> None:
    # bf16 keeps 8 bits of mantissa: ~1e-2 relative per op, a few % through ~10 layers.
    # fp16 keeps 11 bits; tolerances measured with margin on the ffhqlike64 fixture.
    G, io = nvidia_generator("ffhqlike64"), nvidia_io("ffhqlike64")
    G.synthesis.low_precision_resolutions = frozenset(G.config.block_resolutions)
    with torch.autocast("cpu", dtype=dtype):
        img = G.synthesis(io["w_plus"])
    assert img.dtype == torch.float32
    assert rel_error(img, io["img_const"]) < tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_demodulation_coefficients_stay_float32_under_autocast(dtype: torch.dtype) -> None:
    # A float32 island: autocast would otherwise run its matrix product in low precision.
    gen = torch.Generator().manual_seed(0)
    weight, styles = torch.randn(64, 32, 3, 3, generator=gen), torch.randn(2, 32, generator=gen)
    expected = (styles[:, None, :, None, None] * weight[None]).square().sum(dim=[2, 3, 4]).add(1e-8).rsqrt()
    with torch.autocast("cpu", dtype=dtype):
        got = demodulation_coefficients(weight, styles)
    assert got.dtype == torch.float32
    assert rel_error(got, expected) < 1e-6


def test_only_low_precision_resolutions_run_in_low_precision() -> None:
    """Blocks outside num_fp16_res are float32 islands, as in NVIDIA's networks."""
    G, io = nvidia_generator("ffhqlike64"), nvidia_io("ffhqlike64")
    # num_fp16_res=4 at 64 px: NVIDIA's first fp16 resolution is max(2**(6 + 1 - 4), 8) = 8.
    assert G.synthesis.low_precision_resolutions == frozenset({8, 16, 32, 64})
    dtypes: dict[int, torch.dtype] = {}
    for block in G.synthesis.blocks:
        block.conv1.register_forward_hook(lambda m, a, out, r=block.resolution: dtypes.__setitem__(r, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        G.synthesis(io["w_plus"][:1])
    assert dtypes == {4: torch.float32, 8: torch.bfloat16, 16: torch.bfloat16, 32: torch.bfloat16, 64: torch.bfloat16}


def test_upfirdn2d_upsample_closed_form() -> None:
    # Upsampling a constant image with gain up^2 keeps it constant away from the borders.
    x = torch.ones(1, 1, 6, 6)
    y = upfirdn2d(x, make_filter(), up=2, padding=(2, 1, 2, 1), gain=4)
    assert y.shape == (1, 1, 12, 12)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))
    # An impulse spreads to the [1,3,3,1] outer-product footprint.
    out = upfirdn2d(torch.ones(1, 1, 1, 1), make_filter(), padding=(3, 3, 3, 3))
    assert torch.allclose(out[0, 0], torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    with pytest.raises(ValueError, match="1-D taps"):
        upfirdn2d(x, torch.outer(make_filter(), make_filter()))
    with pytest.raises(ValueError, match="fewer than the 4 filter taps"):
        upfirdn2d(x, make_filter(), padding=(-2, -1, 0, 0))  # 6 - 3 = 3 columns left


def test_upfirdn2d_forms_agree() -> None:
    # The shifted-slice form (what torch.compile runs) against the depthwise convolution (eager,
    # export), in float64 with an asymmetric filter, so that a missing flip or a transposed
    # axis shows; then the compiled function as a whole, forward and input gradient.
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, 5.0, -1.0], dtype=torch.float64)
    assert torch.allclose(_sliced_fir(x, f, 3.0), _depthwise_fir(x, f, 3.0), atol=1e-12)

    def resample(v: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(v, make_filter(), up=2, padding=(2, 1, 3, 0), gain=4)

    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    eager = resample(x)
    (eager_grad,) = torch.autograd.grad(eager.square().sum(), x)
    compiled = torch.compile(resample, fullgraph=True)(x)
    (compiled_grad,) = torch.autograd.grad(compiled.square().sum(), x)
    assert torch.allclose(compiled, eager, atol=1e-6) and torch.allclose(compiled_grad, eager_grad, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("demodulate", [False, True], ids=["torgb", "demodulated"])
def test_compiled_1x1_modulated_conv_is_a_matrix_product(demodulate: bool, layout: torch.memory_format) -> None:
    # Under torch.compile the 1x1 case (ToRGB) is traced as a batched matrix product, not a
    # convolution, and agrees with the eager convolution, forward and input / style gradients
    # (float64), for a contiguous and a channels-last input (the compiled CPU step's layout).
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64).to(memory_format=layout).requires_grad_()
    styles = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    traced: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., object]:
        traced.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    def layer(x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        return modulated_conv2d(x, weight, styles, demodulate=demodulate)

    results = []
    for fn in (layer, torch.compile(layer, backend=backend, fullgraph=True)):
        y = fn(x, styles)
        results.append((y, *torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum(), (x, styles))))
    for eager, compiled in zip(*results):
        assert torch.allclose(compiled, eager, atol=1e-12)
    assert any("bmm" in target for target in traced) and not any("conv" in target for target in traced)
    assert results[1][0].is_contiguous(memory_format=layout)
    # Under autocast both forms return the autocast dtype, even for a float32 input.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x32, s32 = x.detach().float(), styles.detach().float()
        eager_dtype = modulated_conv2d(x32, weight.float(), s32, demodulate=demodulate).dtype
        compiled_dtype = torch.compile(lambda a, b: modulated_conv2d(a, weight.float(), b, demodulate=demodulate), backend=backend)(x32, s32).dtype
    assert eager_dtype == compiled_dtype == torch.bfloat16


def test_export_traces_the_convolution_forms() -> None:
    # torch.export counts as compiling: plain, it traces the compiled step's forms (shifted
    # slices, a matrix product); under convolution_forms (what the ONNX exporter uses) one
    # depthwise convolution for the filter and one 1x1 convolution for ToRGB.
    class Upsample(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return upsample2d(x, make_filter())

    class ToRGB(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return modulated_conv2d(x, torch.ones(3, 3, 1, 1), torch.ones(1, 3), demodulate=False)

    def traced(module: torch.nn.Module) -> list[str]:
        graph = torch.export.export(module, (torch.randn(1, 3, 8, 8),)).graph
        return [str(node.target) for node in graph.nodes if node.op == "call_function"]

    for module in (Upsample(), ToRGB()):
        with convolution_forms():
            targets = traced(module)
        assert sum("conv" in t for t in targets) == 1 and not any("bmm" in t for t in targets)
        assert not any("conv" in t for t in traced(module))
    assert any("bmm" in t for t in traced(ToRGB()))
