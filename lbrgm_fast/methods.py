"""The reconstruction methods and their published settings, as named presets.

Facts from ../shared/REFERENCE.md §1–2. The L-BRGM authors' code differs from the paper text in
the pixel weight, the Adam betas and mean-vs-sum reductions of the priors; both are available:
`authors` (what produced the published numbers) is the default, `paper` follows the text.
Pixel and perceptual terms are means over pixels / features of images in [0, 255] in every preset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from lbrgm_fast.errors import UserError
from lbrgm_fast.priors import Reduction

MethodName = Literal["lbrgm", "brgm", "none"]
PresetName = Literal["authors", "paper"]
METHODS: tuple[str, ...] = ("lbrgm", "brgm", "none")
PRESETS: tuple[str, ...] = ("authors", "paper")


@dataclass(frozen=True)
class MethodSettings:
    """Loss weights and optimiser settings of one reconstruction method.

    Attributes:
        method: "lbrgm" (w+ and z, mapping + latent priors), "brgm" (w+, Gaussian + cosine
            priors, start at w_avg) or "none" (w+ with no prior).
        preset: Which published variant the numbers come from.
        pixel_weight: λpix on mean((A G(w+) − y)²), images in [0, 255].
        perceptual_weight: λvgg on the BRGM-normalised perceptual term (LPIPS-VGG / D).
        mapping_weight: λmap on the mapping prior (lbrgm).
        latent_weight: λlat on the latent prior (lbrgm).
        prior_reduction: "mean" (authors' code) or "sum" (paper text) for the lbrgm priors.
        gaussian_weight: λw of BRGM's Gaussian prior.
        cosine_weight: λc of BRGM's cosine prior.
        lr: Adam learning rate (constant).
        betas: Adam betas.
        optimize_z: Whether z is a free variable (lbrgm only).
        start: "best-candidate" (best of N1 random z, w_i = M(z*)) or "w-avg" (BRGM).
    """

    method: MethodName
    preset: PresetName
    pixel_weight: float
    perceptual_weight: float
    mapping_weight: float = 0.0
    latent_weight: float = 0.0
    prior_reduction: Reduction = "mean"
    gaussian_weight: float = 0.0
    cosine_weight: float = 0.0
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    optimize_z: bool = False
    start: Literal["best-candidate", "w-avg"] = "best-candidate"


_LBRGM_AUTHORS = MethodSettings(
    method="lbrgm",
    preset="authors",
    pixel_weight=2e-4,
    perceptual_weight=2e7,
    mapping_weight=30.0,
    latent_weight=0.4,
    prior_reduction="mean",
    betas=(0.9, 0.999),
    optimize_z=True,
)
_LBRGM_PAPER = replace(_LBRGM_AUTHORS, preset="paper", pixel_weight=2e-5, prior_reduction="sum", betas=(0.96, 0.9999))
_BRGM = MethodSettings(
    method="brgm",
    preset="authors",
    pixel_weight=1e-3,
    perceptual_weight=1e7,
    gaussian_weight=100.0,
    cosine_weight=0.1,
    start="w-avg",
)


def method_settings(method: str = "lbrgm", preset: str = "authors", superres_factor: int | None = None) -> MethodSettings:
    """The settings of `method` under `preset`.

    BRGM and the no-prior ablation have one published setting each; `preset` only changes
    L-BRGM (and the data-term weights of `none`, which follow L-BRGM's). BRGM raises its cosine
    weight to 1 for super-resolution factors above 16, as its code does.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    lbrgm = _LBRGM_AUTHORS if preset == "authors" else _LBRGM_PAPER
    if method == "lbrgm":
        return lbrgm
    if method == "none":
        return replace(lbrgm, method="none", mapping_weight=0.0, latent_weight=0.0, optimize_z=False)
    if superres_factor is not None and superres_factor > 16:
        return replace(_BRGM, cosine_weight=1.0)
    return _BRGM
