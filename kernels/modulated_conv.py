"""StyleGAN2's modulated convolution, in the two equivalent forms.

Modulation scales the convolution's input channels by a per-sample style s; demodulation
rescales each output channel so that it has unit expected variance:

    y[b, o] = d[b, o] * conv(x[b] * s[b], W)[o],   d[b, o] = 1 / sqrt(sum_{i,k} (W[o, i, k] s[b, i])^2)

* non-fused (default): scale the input, convolve with the shared constant weight, scale the
  output. Batch-size independent, exportable, and its backward needs no weight-gradient GEMM.
* fused: build one weight per sample and run a grouped convolution (groups = batch), as the
  research code does for batch 1 at inference.

Under torch.compile (forms.py) the non-fused 1x1 case — ToRGB, 3 output channels — runs as a
batched matrix product with the style folded into a per-sample [B, O, I] weight, instead of a
convolution that needs the input scaled first: the fastest of the forms measured, on the CPU
and the GPU (bench/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .forms import compiler_forms
from .upfirdn2d import upfirdn2d


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """d[b, o] = rsqrt(sum_i s[b, i]^2 * sum_k W[o, i, k]^2 + 1e-8), in float32.

    Factorising the sum avoids materialising the [B, O, I, k, k] per-sample weights. Autocast
    is off here: it would run the matrix product in bf16/fp16 (measured: 0.4 % error in d).
    """
    with torch.autocast(device_type=weight.device.type, enabled=False):
        w2 = weight.float().square().sum(dim=[2, 3])  # [O, I]
        return (styles.float().square() @ w2.t() + 1e-8).rsqrt()  # [B, O]


def _autocast_fp16(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def _upsampling_conv(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, groups: int) -> torch.Tensor:
    """2x upsampling 'same' convolution: stride-2 transposed conv, then the FIR filter (gain 4).

    `weight` is [groups * I, O, k, k] in conv_transpose2d layout. The transposed conv gives
    2H + k - 2 pixels; the filter's padding below brings the result to exactly 2H, centred as
    in the reference implementation.
    """
    k, fw = weight.shape[-1], f.shape[-1]
    x = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, groups=groups)
    pad0 = k // 2 + (fw + 1) // 2 - (k - 1)
    pad1 = k // 2 + (fw - 2) // 2 - (k - 2)
    return upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1), gain=4)


def _modulated_channel_mix(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, dcoefs: torch.Tensor | None) -> torch.Tensor:
    """Modulated 1x1 convolution as a batched matrix product: y[b] = (d[b] * W * s[b]) @ x[b].

    The style and demodulation fold into a per-sample [B, O, I] weight (float32 at least, then
    cast to the compute dtype as the convolution casts its weight); the product runs on the GEMM
    library (cuBLAS / oneDNN), and so does the backward's sum over all pixels for the style
    gradient, which as an Inductor reduction was the step's costliest kernel on the GPU.
    A channels-last input is multiplied as [B, HW, I] so that no layout copy is made. Returns
    what the convolution would: the autocast dtype under autocast, else x's dtype.
    """
    batch, in_ch = styles.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    per_sample = weight.to(acc).reshape(1, -1, in_ch) * styles.to(acc).reshape(batch, 1, in_ch)  # [B, O, I]
    if dcoefs is not None:
        per_sample = per_sample * dcoefs.reshape(batch, -1, 1)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    per_sample, x = per_sample.to(dtype), x.to(dtype)
    height, width = x.shape[2:]
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        y = torch.bmm(x.permute(0, 2, 3, 1).reshape(batch, height * width, in_ch), per_sample.transpose(1, 2))  # [B, HW, O]
        return y.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
    return torch.bmm(per_sample, x.reshape(batch, in_ch, height * width)).reshape(batch, -1, height, width)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: bool = False,
    resample_filter: torch.Tensor | None = None,
    fused: bool = False,
) -> torch.Tensor:
    """Modulated (and optionally demodulated, 2x upsampling) convolution.

    Args:
        x: Input features [B, I, H, W].
        weight: Constant convolution weight [O, I, k, k] (k odd; 'same' padding).
        styles: Per-sample input-channel scales [B, I], float32.
        demodulate: Normalise each output channel (True in conv layers, False in ToRGB).
        up: Upsample 2x (transposed conv + FIR filter) instead of a plain convolution.
        resample_filter: 1-D taps of the separable FIR filter used when `up` (from `make_filter`).
        fused: Use the grouped per-sample-weight form instead of the non-fused form.

    Returns:
        [B, O, H', W'] with H' = 2H when `up`, else H.
    """
    batch, in_ch = styles.shape
    out_ch, w_in, kh, kw = weight.shape
    if x.shape[1] != in_ch or w_in != in_ch:
        raise ValueError(f"channel mismatch: x {tuple(x.shape)}, weight {tuple(weight.shape)}, styles {tuple(styles.shape)}")
    if up and resample_filter is None:
        raise ValueError("up=True needs resample_filter")

    if demodulate and _autocast_fp16(x.device.type):
        # float16 range guard (as in NVIDIA's code): rescale style and weight to max |.| = 1 first.
        # Demodulation divides the same factors out again, so the result is unchanged.
        weight = weight / weight.abs().amax(dim=[1, 2, 3], keepdim=True)
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    dcoefs = demodulation_coefficients(weight, styles) if demodulate else None  # [B, O]

    if not fused and kh == kw == 1 and not up and compiler_forms():
        return _modulated_channel_mix(x, weight, styles, dcoefs)
    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, in_ch, 1, 1)
        if up:
            x = _upsampling_conv(x, weight.transpose(0, 1), resample_filter, groups=1)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=kh // 2)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_ch, 1, 1)
        return x

    w = weight.float()[None] * styles.float().reshape(batch, 1, in_ch, 1, 1)  # [B, O, I, k, k]
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, out_ch, 1, 1, 1)
    x = x.reshape(1, batch * in_ch, *x.shape[2:])
    if up:
        w = w.transpose(1, 2).reshape(batch * in_ch, out_ch, kh, kw)
        x = _upsampling_conv(x, w, resample_filter, groups=batch)
    else:
        x = F.conv2d(x, w.reshape(batch * out_ch, in_ch, kh, kw).to(x.dtype), padding=kh // 2, groups=batch)
    return x.reshape(batch, out_ch, *x.shape[2:])
