"""FIR up/down-sampling of images ("upfirdn2d") in plain torch.

The reference formulation of StyleGAN2's resampling: insert zeros to upsample, pad, convolve
with a separable FIR filter, subsample. Written with ordinary torch ops so it runs on any device,
differentiates, compiles and exports to ONNX.

The filtering has two equal forms (see forms.py for who gets which):

* one depthwise convolution (groups = channels), a single library kernel;
* a sum of shifted slices along each axis, which Inductor fuses with the padding into one or
  two memory-bound kernels, backward included.

Compiled, the sliced form is the faster one on the GPU (cuDNN runs the depthwise convolution
with a direct NCHW kernel and layout transforms around it) and on the CPU; run op by op, the
convolution wins (the slices cost seven ops and their temporaries per axis). Measurements:
bench/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .forms import compiler_forms


def make_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable FIR filter: 1-D taps normalised so that the 2-D filter outer(f, f) sums to 1."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    return t / t.sum()


def _depthwise_fir(x: torch.Tensor, f: torch.Tensor, gain: float) -> torch.Tensor:
    """'Valid' true convolution of every channel with outer(f, f) * gain, as one grouped conv."""
    weight = (torch.outer(f, f) * gain).flip([0, 1]).to(x.dtype)
    return F.conv2d(x, weight[None, None].expand(x.shape[1], 1, -1, -1), groups=x.shape[1])


def _fir_along(x: torch.Tensor, f: torch.Tensor, dim: int) -> torch.Tensor:
    """'Valid' true convolution of `x` with the 1-D taps `f` along `dim`, as shifted slices."""
    k = f.shape[0]
    n = x.shape[dim] - k + 1
    out = x.narrow(dim, 0, n) * f[k - 1]
    for j in range(1, k):
        out = out + x.narrow(dim, j, n) * f[k - 1 - j]
    return out


def _sliced_fir(x: torch.Tensor, f: torch.Tensor, gain: float) -> torch.Tensor:
    """Same as `_depthwise_fir`, separably, as sums of shifted slices (fused by Inductor)."""
    return _fir_along(_fir_along(x, (f * gain).to(x.dtype), 2), f.to(x.dtype), 3)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the separable filter `f`, downsample.

    Args:
        x: Images [N, C, H, W].
        f: 1-D taps [k] of the separable 2-D filter outer(f, f) (from `make_filter`); applied
            as a true convolution (flipped), as NVIDIA's default.
        up: Integer upsampling factor.
        down: Integer downsampling factor.
        padding: (left, right, top, bottom) padding after upsampling; negative values crop.
        gain: Overall gain of the filter (up**2 keeps the mean when upsampling by zero insertion).
    """
    if f.ndim != 1:
        raise ValueError(f"upfirdn2d takes the 1-D taps of a separable filter, got shape {tuple(f.shape)}")
    n, c, h, w = x.shape
    if up > 1:
        # [N, C, H, 1, W, 1] padded with up-1 zeros after every pixel in both directions.
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    left, right, top, bottom = padding
    x = F.pad(x, [max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)])
    x = x[
        :,
        :,
        max(-top, 0) : x.shape[2] - max(-bottom, 0),
        max(-left, 0) : x.shape[3] - max(-right, 0),
    ]
    if min(x.shape[2:]) < f.shape[0]:
        raise ValueError(f"upfirdn2d: {tuple(x.shape[2:])} pixels after padding, fewer than the {f.shape[0]} filter taps")
    fir = _sliced_fir if compiler_forms() else _depthwise_fir
    x = fir(x, f, gain)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample images by `factor` with filter `f`, keeping the output aligned with the input."""
    fw = f.shape[-1]
    pad0 = (fw + factor - 1) // 2
    pad1 = (fw - factor) // 2
    return upfirdn2d(x, f, up=factor, padding=(pad0, pad1, pad0, pad1), gain=factor**2)
