"""Image quality metrics of a restoration against its ground truth, per image.

Every metric compares images [B, 3, H, W] in [0, 1] and returns one value per image:

* MSE and PSNR (10·log10(1 / MSE), data range 1);
* SSIM (Wang et al. 2004) from torchmetrics' SSIM map: 11×11 Gaussian window, σ 1.5,
  K1 0.01, K2 0.03, data range 1, averaged over channels and over the pixels at least 5 from
  the border, which is scikit-image's `structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)` (tests/test_eval.py checks it);
* LPIPS(alex) and LPIPS(vgg) v0.1: the lpips package's networks (`LpipsAlex`, and φ's VGG16
  weights at the images' own size, without φ's resize to 256), equal to `lpips.LPIPS` on the
  same weights.

On a region (inpainting: the missing pixels, `missing` [1, 1, H, W], 1 = missing), MSE, PSNR
and SSIM average over the region's pixels only (SSIM: its map's values there, border excluded);
LPIPS, which has no per-pixel form in v0.1's scalar, compares the image with the observed
pixels replaced by the ground truth's, so only the region's errors count.
"""

from __future__ import annotations

import torch
from torch import nn

from lbrgm_fast.perceptual import LpipsAlex, VGG16Features

#: Metric names, in the order results list them; "hole_" + name is the same on the missing region.
METRICS = ("psnr", "ssim", "mse", "lpips_alex", "lpips_vgg")
#: Metrics where higher is better (the others: lower is better).
HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})
#: SSIM's window and its border: values within `SSIM_BORDER` of the edge are left out of means.
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_BORDER = (SSIM_WINDOW - 1) // 2


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [0, 1]: 10·log10(1 / MSE), (B,); inf where MSE is 0."""
    return 10 * torch.log10(1.0 / mse)


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torchmetrics' per-pixel SSIM of x against y [B, 3, H, W] in [0, 1], [B, 3, H, W]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        x.double(), y.double(), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW,
        data_range=1.0, k1=0.01, k2=0.03, reduction="none", return_full_image=True,
    )
    return full


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [B, C, H, W] over channels and the pixels where `weight` [1|B, 1, H, W] is 1, (B,)."""
    weight = weight.expand(values.shape[0], values.shape[1], -1, -1)
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


class ImageMetrics(nn.Module):
    """PSNR, SSIM, MSE, LPIPS(alex) and LPIPS(vgg) of restorations against ground truths.

    Args:
        alex: The LPIPS(alex) network (the oracle's monitor).
        vgg: φ; its VGG16 weights are reused at `resolution` (LPIPS(vgg) at the images' size).
        resolution: The images' side length.
    """

    def __init__(self, alex: LpipsAlex, vgg: VGG16Features, resolution: int) -> None:
        super().__init__()
        self.alex = alex
        self.vgg = VGG16Features(resolution)
        self.vgg.load_state_dict(vgg.state_dict())
        self.vgg.to(next(vgg.parameters()).device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, truth: torch.Tensor, missing: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each metric name (and "hole_" + name when `missing` is given) -> (B,) float64.

        x, truth: [B, 3, H, W] in [0, 1]; missing: [1, 1, H, W], 1 on the missing pixels.
        """
        x, truth = x.float(), truth.float()
        everywhere = torch.zeros_like(truth[:1, :1])
        everywhere[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER] = 1
        ssim = ssim_map(x, truth)
        out = self._scores(x, truth, torch.ones_like(everywhere), ssim, everywhere, "")
        if missing is not None:
            missing = missing.to(x.device).float()
            merged = x * missing + truth * (1 - missing)
            out |= self._scores(merged, truth, missing, ssim, missing * everywhere, "hole_")
        return out

    def _scores(self, x: torch.Tensor, truth: torch.Tensor, region: torch.Tensor, ssim: torch.Tensor,
                ssim_region: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        """The five metrics of x against truth: MSE / PSNR over `region`, SSIM's map over
        `ssim_region`, LPIPS of the whole images (x already holds the truth outside a region)."""
        mse = masked_mean((x - truth).double().square(), region.double())
        values = {
            "psnr": psnr_from_mse(mse),
            "ssim": masked_mean(ssim, ssim_region.double()),
            "mse": mse,
            "lpips_alex": self.alex(x * 2 - 1, truth * 2 - 1).double(),
            "lpips_vgg": self.vgg.distance(x * 2 - 1, truth * 2 - 1).double(),
        }
        return {prefix + name: values[name].cpu() for name in METRICS}
