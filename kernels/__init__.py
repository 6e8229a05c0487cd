"""Low-level StyleGAN2 ops as plain-torch reference implementations (installed as lbrgm_fast.kernels).

Fused GPU kernels may join these later behind the same signatures; the reference versions stay
as the fallback and the ground truth for their tests.
"""

from .bias_act import bias_act
from .modulated_conv import demodulation_coefficients, modulated_conv2d
from .upfirdn2d import make_filter, upfirdn2d, upsample2d

__all__ = [
    "bias_act",
    "demodulation_coefficients",
    "make_filter",
    "modulated_conv2d",
    "upfirdn2d",
    "upsample2d",
]
