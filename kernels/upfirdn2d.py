"""FIR up/down-sampling of images ("upfirdn2d") in plain torch.

The reference formulation of StyleGAN2's resampling: insert zeros to upsample, pad, convolve
with a 2-D FIR filter, subsample. Written with ordinary torch ops so it runs on any device,
differentiates, compiles and exports to ONNX; a fused GPU kernel can replace it later without
changing callers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def make_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable 2-D FIR filter from 1-D taps, normalised to sum 1 (shape [len, len])."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(t, t)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with `f`, downsample.

    Args:
        x: Images [N, C, H, W].
        f: 2-D filter [fh, fw]; applied as a true convolution (flipped), as NVIDIA's default.
        up: Integer upsampling factor.
        down: Integer downsampling factor.
        padding: (left, right, top, bottom) padding after upsampling; negative values crop.
        gain: Overall gain of the filter (up**2 keeps the mean when upsampling by zero insertion).
    """
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
    weight = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample images by `factor` with filter `f`, keeping the output aligned with the input."""
    fw = f.shape[-1]
    pad0 = (fw + factor - 1) // 2
    pad1 = (fw - factor) // 2
    return upfirdn2d(x, f, up=factor, padding=(pad0, pad1, pad0, pad1), gain=factor**2)
