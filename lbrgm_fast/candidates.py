"""The start of L-BRGM (and of the no-prior ablation): the best of N1 random latents.

For each seed, N1 latents z are drawn from N(0, I) (a CPU generator seeded with that seed, so
the draw does not depend on the device or the batch), their images are generated and degraded
by the operator, and each row that has the seed keeps the z whose image is closest to its
observation by the perceptual term (by the pixel term when the perceptual weight is off),
on the pixels the pixel term uses. Forward passes only, on the run's `ForwardEngine`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lbrgm_fast.objective import Objective, generator_to_255, perceptual_input
from lbrgm_fast.runtime.engines import ForwardEngine


@torch.no_grad()
def best_candidates(objective: Objective, engine: ForwardEngine, seeds: Sequence[int], count: int, batch: int) -> torch.Tensor:
    """z [B, z_dim]: per row (seed `seeds[row]`), the best of `count` seeded random z, scored
    `batch` candidates per forward pass."""
    G = objective.generator
    device = objective.observation.device
    best = torch.empty(len(seeds), G.z_dim, device=device)
    for seed in sorted(set(seeds)):
        rows = [i for i, s in enumerate(seeds) if s == seed]
        z_all = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        scores = []
        for z in z_all.split(batch):
            measured = objective.operator(generator_to_255(engine.generate(z)))
            # Score every candidate against every observation that shares this seed.
            per_row = []
            # φ sees every pixel (a holdout only leaves pixels out of the pixel term), so the
            # rows that share this seed share the candidates' features.
            features = None if objective.perceptual is None else engine.features(perceptual_input(measured))
            for r in rows:
                if objective.perceptual is None:
                    per_row.append(objective.pixel(measured, slice(r, r + 1)))
                    continue
                targets = [t[r : r + 1] for t in objective.target_features]
                per_row.append(objective.perceptual.feature_loss(features, targets))
            scores.append(torch.stack(per_row))  # [rows, chunk]
        choice = torch.cat(scores, dim=1).argmin(dim=1)
        best[rows] = z_all[choice]
    return best
