"""The L-BRGM objective J(w+, z): data terms plus priors, a weighted sum per sample.

    J = λpix·pixel + λvgg·perceptual + λmap·mapping + λlat·latent + λw·gaussian + λc·cosine

    pixel       mean((A G(w+) − y)²)                   images in [0, 255] (REFERENCE §1)
    perceptual  LPIPS_vgg(A G(w+), y) / D              φ's calibration (REFERENCE §4)
    mapping     ‖w_i − M(z)‖² over the layers i        L-BRGM (priors.py)
    latent      ‖z‖²                                   L-BRGM
    gaussian    ((w − w_avg) / σ)²                     BRGM
    cosine      Σ_ij |1 − cos(w_i, w_j)|               BRGM

The weights λ come from `MethodSettings` (methods.py): L-BRGM sets the first four, BRGM the
data terms and the last two, the no-prior ablation only the data terms. Images at the API are
float tensors [B, 3, H, W] in [0, 1]; the data terms compare images in [0, 255], the scale at
which the published λ were calibrated, and the generator works in its raw [-1, 1] scale.

Hole fill: the objective applies `operator.with_fill(settings.hole_fill)` to A G(w+) and fills
the missing pixels of y alike, so the pixel term is unchanged by the fill while φ sees the
filled hole (the L-BRGM authors fill with 1 on the 0–255 scale: preset `authors`).

Held-out pixels (early stopping "holdout", `keep`): they are left out of the pixel term only,
whose mean is then taken over the pixels it keeps, so that λpix weighs a mean squared error per
pixel as published. φ compares the unaltered images, exactly as without a holdout: no pixel is
zeroed or filled where the method would not do it, so the perceptual term is the published one.
The consequence: the held-out pixels still reach the fit through φ's features, so their error
is a score of pixels the pixel term never fitted, not of pixels the method never saw. At any
(w+, z), with S_h the summed squared error (A G(w+) − y)² over the held-out pixels' channel
values, N the number of channel values of y and N_h the held-out ones,

    pixel_published · N = pixel_held_out · (N − N_h) + S_h

and every other term is unchanged (tests/test_reconstruct.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from lbrgm_fast.errors import UserError
from lbrgm_fast.methods import MethodSettings
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Operator
from lbrgm_fast.perceptual import VGG16Features
from lbrgm_fast.priors import CosinePrior, GaussianPrior, LatentPrior, MappingPrior

#: The rows of the objective's `terms` [len(TERM_NAMES), B]: the weighted total, then each term.
TERM_NAMES = ("total", "pixel", "perceptual", "mapping", "latent", "gaussian", "cosine")
#: The row of J itself in `terms`: what the step differentiates and the loop watches for NaN.
TOTAL = TERM_NAMES.index("total")


def to_255(images_01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to [0, 255], float32."""
    return images_01.float() * 255.0


def generator_to_255(images: torch.Tensor) -> torch.Tensor:
    """Raw generator output (about [-1, 1]) to [0, 255], unclamped as in the reference code."""
    return (images.float() + 1.0) * 127.5


def perceptual_input(images_255: torch.Tensor) -> torch.Tensor:
    """Images in [0, 255] to φ's input range [-1, 1]."""
    return images_255 / 127.5 - 1


def pixel_term(measured_255: torch.Tensor, observation_255: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """mean((A G(w) − y)²) per sample, (B,): images [B, 3, h, w] in [0, 255]; with `keep`
    [B | 1, 1, h, w] (1 = use), the mean over the kept pixels' channel values only (0 for a
    sample that keeps none: a small observation can draw an empty holdout)."""
    squared = (measured_255 - observation_255).square()
    if keep is None:
        return squared.flatten(1).mean(dim=1)
    kept = keep.expand_as(squared)
    return (squared * kept).flatten(1).sum(dim=1) / kept.flatten(1).sum(dim=1).clamp_min(1)


class Objective(nn.Module):
    """Per-sample L-BRGM / BRGM / no-prior loss J(w+, z) for fixed observations.

    Args:
        generator: Frozen StyleGAN2.
        operator: Forward operator A.
        perceptual: φ (LPIPS-VGG features); None only when the perceptual weight is 0.
        settings: Loss weights (methods.py).
        observation: y in [0, 255], [B, 3, h, w], missing pixels 0 (as A with fill 0 makes it);
            they get the settings' hole fill here.
        keep: Observation-space mask [B, 1, h, w] of the pixels the pixel term uses (1 = use);
            the rest are held out for early stopping (φ still sees every pixel: see the module
            docstring). None uses every pixel.
        gaussian_prior: BRGM's prior (needed when the settings weight it).
        noise_mode: Generator noise ("const": the stored buffers, as the reference code).
    """

    def __init__(
        self,
        generator: Generator,
        operator: Operator,
        perceptual: VGG16Features | None,
        settings: MethodSettings,
        observation: torch.Tensor,
        keep: torch.Tensor | None,
        gaussian_prior: GaussianPrior | None = None,
        noise_mode: Literal["const", "none"] = "const",
    ) -> None:
        super().__init__()
        self.generator = generator
        self.operator = operator.with_fill(settings.hole_fill)
        self.perceptual = perceptual
        self.settings = settings
        self.noise_mode: Literal["const", "none"] = noise_mode
        self.register_buffer("keep", keep)
        self.register_buffer("observation", self.filled(observation))
        if perceptual is None and settings.perceptual_weight:
            raise UserError("the perceptual term needs VGG16 features (perceptual weight is not 0)")
        targets: list[torch.Tensor] = []
        if perceptual is not None:
            with torch.no_grad():
                targets = [f.detach() for f in perceptual.features(perceptual_input(self.observation))]
        # Buffers, so that `.to()` / `.cuda()` move them with the observation.
        self._num_targets = len(targets)
        for k, target in enumerate(targets):
            self.register_buffer(f"target_features_{k}", target, persistent=False)
        self.mapping_prior = MappingPrior(generator.mapping, settings.prior_reduction)
        self.latent_prior = LatentPrior(settings.prior_reduction)
        if settings.gaussian_weight and gaussian_prior is None:
            raise ValueError("settings weight the Gaussian prior but none was given")
        self.gaussian_prior = gaussian_prior if settings.gaussian_weight else None
        self.cosine_prior = CosinePrior()

    def filled(self, observation: torch.Tensor) -> torch.Tensor:
        """y [B, 3, h, w] (missing pixels 0) with its missing pixels at the operator's fill.

        Every operator is linear with fill 0, so the filled one is affine and A_fill(0) is the
        fill in the hole, zero elsewhere: y + A_fill(0).
        """
        if not self.settings.hole_fill:
            return observation
        res = self.generator.img_resolution
        with torch.no_grad():
            hole = self.operator(observation.new_zeros(1, 3, res, res))
        return observation + hole

    @property
    def target_features(self) -> list[torch.Tensor]:
        """φ(y): the observation's perceptual features, one tensor per tap (empty without φ)."""
        return [getattr(self, f"target_features_{k}") for k in range(self._num_targets)]

    def pixel(self, measured_255: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """The pixel term of measured images [b, 3, h, w] in [0, 255] against the rows `rows`
        of y (one row broadcasts over b), on the pixels it keeps, (b,)."""
        return pixel_term(measured_255, self.observation[rows], None if self.keep is None else self.keep[rows])

    def perceptual_term(self, measured_255: torch.Tensor, target_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """LPIPS-VGG / D of a measured image against precomputed target features, (B,)."""
        if self.perceptual is None:
            return measured_255.new_zeros(measured_255.shape[0])
        return self.perceptual.feature_loss(self.perceptual.features(perceptual_input(measured_255)), list(target_features))

    def forward(self, w_plus: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """J and its terms at (w+ [B, num_ws, w_dim], z [B, z_dim] or None).

        Returns (terms [len(TERM_NAMES), B], rows named by TERM_NAMES; images [B, 3, H, W] in
        [-1, 1], the generator's output at w+).
        """
        s = self.settings
        images = self.generator.synthesis(w_plus, noise_mode=self.noise_mode)
        measured = self.operator(generator_to_255(images))
        pixel = self.pixel(measured)
        perceptual = self.perceptual_term(measured, self.target_features)
        zero = torch.zeros_like(pixel)
        mapping = self.mapping_prior(w_plus, z) if z is not None and s.mapping_weight else zero
        latent = self.latent_prior(z) if z is not None and s.latent_weight else zero
        gaussian = self.gaussian_prior(w_plus) if self.gaussian_prior is not None else zero
        cosine = self.cosine_prior(w_plus) if s.cosine_weight else zero
        total = (
            s.pixel_weight * pixel
            + s.perceptual_weight * perceptual
            + s.mapping_weight * mapping
            + s.latent_weight * latent
            + s.gaussian_weight * gaussian
            + s.cosine_weight * cosine
        )
        terms = {"total": total, "pixel": pixel, "perceptual": perceptual, "mapping": mapping,
                 "latent": latent, "gaussian": gaussian, "cosine": cosine}
        return torch.stack([terms[name] for name in TERM_NAMES]), images

    def holdout_error(self, images: torch.Tensor, holdout: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the held-out observed pixels, (B,) (early stopping without ground truth).

        images [B, 3, H, W] in [-1, 1]; holdout [B, 1, h, w], 1 on the held-out pixels.
        """
        return pixel_term(self.operator(generator_to_255(images)), self.observation, holdout)
