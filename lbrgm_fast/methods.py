"""The reconstruction methods and their published settings, as named presets.

Facts from ../shared/REFERENCE.md §1, §2 and §8. L-BRGM (and the no-prior ablation, which takes
L-BRGM's data terms):

* `authors` (default): the authors' code, which produced the published numbers: λpix 2e-4,
  mean-reduced priors, Adam β (0.9, 0.999), and missing pixels filled with 1 on the 0–255
  scale (their inpainting operator);
* `paper`: the paper's text: λpix 2e-5, summed priors, β (0.96, 0.9999), y = m ⊙ x (fill 0).

BRGM:

* `brgm-pytorch` (default): BRGM's own code (brgm-pytorch): lr 0.1, w_avg and σ from 10,000
  mapping samples, y = m ⊙ x;
* `lbrgm-paper`: the copy of BRGM the L-BRGM paper compared against: an effective lr 0.01,
  w_avg and σ from 100 samples, and the authors' hole fill of 1.

Pixel and perceptual terms are means over pixels / features of images in [0, 255] in every preset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from lbrgm_fast.errors import UserError
from lbrgm_fast.priors import Reduction

MethodName = Literal["lbrgm", "brgm", "none"]
PresetName = Literal["authors", "paper", "brgm-pytorch", "lbrgm-paper"]
METHODS: tuple[str, ...] = ("lbrgm", "brgm", "none")
#: Each method's presets, its default first.
PRESETS: dict[str, tuple[str, ...]] = {
    "lbrgm": ("authors", "paper"),
    "none": ("authors", "paper"),
    "brgm": ("brgm-pytorch", "lbrgm-paper"),
}


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
        hole_fill: The value missing pixels take in A G(w) and in y, on the 0–255 scale
            (the inpainting operator's fill; 0 is y = m ⊙ x). It changes what φ sees in the
            hole, not the pixel term (both sides are filled alike).
        w_avg_samples: Mapping samples BRGM's w_avg and σ are estimated from (brgm).
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
    hole_fill: float = 0.0
    w_avg_samples: int = 10_000


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
    hole_fill=1.0,
)
_LBRGM_PAPER = replace(_LBRGM_AUTHORS, preset="paper", pixel_weight=2e-5, prior_reduction="sum", betas=(0.96, 0.9999), hole_fill=0.0)
_BRGM = MethodSettings(
    method="brgm",
    preset="brgm-pytorch",
    pixel_weight=1e-3,
    perceptual_weight=1e7,
    gaussian_weight=100.0,
    cosine_weight=0.1,
    start="w-avg",
)
_BRGM_LBRGM_PAPER = replace(_BRGM, preset="lbrgm-paper", lr=0.01, w_avg_samples=100, hole_fill=1.0)


def resolve_preset(method: str, preset: str | None) -> str:
    """`preset`, or `method`'s default when None; UserError for an unknown method or a preset
    that is not `method`'s."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if preset is None:
        return PRESETS[method][0]
    if preset not in PRESETS[method]:
        raise UserError(f"unknown preset {preset!r} for method {method}; choose one of {', '.join(PRESETS[method])}")
    return preset


def parse_method(spec: str) -> tuple[str, str | None]:
    """"method" or "method:preset" (e.g. "brgm:lbrgm-paper", as `eval --methods` takes them)
    -> (method, preset or None for the default); UserError for unknown names."""
    method, _, preset = spec.partition(":")
    resolve_preset(method, preset or None)
    return method, preset or None


def method_settings(method: str = "lbrgm", preset: str | None = None, superres_factor: int | None = None) -> MethodSettings:
    """The settings of `method` under `preset` (None: the method's default, `PRESETS`).

    The no-prior ablation takes the data terms of the L-BRGM preset of that name. BRGM raises
    its cosine weight to 1 for super-resolution factors above 16, as its code does.
    """
    preset = resolve_preset(method, preset)
    if method == "brgm":
        brgm = _BRGM if preset == "brgm-pytorch" else _BRGM_LBRGM_PAPER
        if superres_factor is not None and superres_factor > 16:
            return replace(brgm, cosine_weight=1.0)
        return brgm
    lbrgm = _LBRGM_AUTHORS if preset == "authors" else _LBRGM_PAPER
    if method == "lbrgm":
        return lbrgm
    return replace(lbrgm, method="none", mapping_weight=0.0, latent_weight=0.0, optimize_z=False)
