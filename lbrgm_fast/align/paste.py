"""Undo an alignment: put a (restored) aligned crop back into its photo with a feathered seam.

Each photo pixel whose centre falls inside the crop's quad is blended with the crop sampled at
that point; the weight is 1 in the middle of the crop and falls smoothly to 0 over the outer
`feather` fraction of the crop's side. Every other pixel is returned untouched (bit-identical:
the photo tensor's values are copied, not recomputed).

Images are float tensors [3, H, W] in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lbrgm_fast.align.ffhq import FaceTransform

#: Default width of the seam, as a fraction of the crop's side. FFHQ's crop shows the face in its
#: middle half, so a tenth of the side blends background and hair, not the face.
FEATHER = 0.1


def paste(crop: torch.Tensor, photo: torch.Tensor, transform: FaceTransform, feather: float = FEATHER) -> torch.Tensor:
    """`photo` [3, H, W] with `crop` [3, n, n] pasted where `transform` took it from.

    The crop may have any side n (a restoration at the generator's resolution of a crop aligned
    at another size): only the quad matters. A crop larger than its place in the photo is first
    reduced (antialiased) to about that place's size, so the paste does not alias.
    """
    if crop.ndim != 3 or crop.shape[0] != 3 or crop.shape[1] != crop.shape[2]:
        raise ValueError(f"crop must be [3, n, n], got {list(crop.shape)}")
    out = photo.clone()
    placed = _placement(transform, photo.shape[2], photo.shape[1])
    if placed is None:
        return out
    (x0, y0, x1, y1), uv = placed
    side = math.ceil(transform.side)
    if crop.shape[-1] > side:
        crop = F.interpolate(crop[None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
    weight = _seam_weight(uv, feather).to(photo.dtype)  # [h, w]
    sampled = F.grid_sample(crop[None].to(photo.dtype), (uv * 2 - 1)[None].to(photo.dtype), mode="bilinear",
                            padding_mode="border", align_corners=False)[0]
    region = out[:, y0:y1, x0:x1]
    blended = (region + (sampled - region) * weight).clamp(0, 1)
    out[:, y0:y1, x0:x1] = torch.where(weight > 0, blended, region)
    return out


def seam_mask(transform: FaceTransform, feather: float = FEATHER) -> torch.Tensor:
    """[H, W] weight `paste` gives the crop at each photo pixel (0 where the photo is kept)."""
    width, height = transform.photo_size
    mask = torch.zeros(height, width, dtype=torch.float32)
    placed = _placement(transform, width, height)
    if placed is not None:
        (x0, y0, x1, y1), uv = placed
        mask[y0:y1, x0:x1] = _seam_weight(uv, feather)
    return mask


def _placement(transform: FaceTransform, width: int, height: int) -> tuple[tuple[int, int, int, int], torch.Tensor] | None:
    """Where the crop lands in a `width` x `height` photo: the quad's bounding box in whole
    pixels within the photo (x0, y0, x1, y1), and the crop coordinates [h, w, 2] of its pixel
    centres as fractions of the crop's side (in [0, 1] inside the quad); None if it misses."""
    lo, hi = transform.quad.min(0), transform.quad.max(0)
    x0, y0 = max(math.floor(lo[0]), 0), max(math.floor(lo[1]), 0)
    x1, y1 = min(math.ceil(hi[0]), width), min(math.ceil(hi[1]), height)
    if x1 <= x0 or y1 <= y0:
        return None
    # float32: photo coordinates up to 8k are exact to a thousandth of a pixel.
    xs = torch.arange(x0, x1, dtype=torch.float32) + 0.5
    ys = torch.arange(y0, y1, dtype=torch.float32) + 0.5
    points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h, w, 2] (x, y)
    m = transform.matrix()
    inverse = torch.from_numpy(np.linalg.inv(m[:, :2]) / transform.size).float()
    return (x0, y0, x1, y1), (points - torch.from_numpy(m[:, 2]).float()) @ inverse.T


def _seam_weight(uv: torch.Tensor, feather: float) -> torch.Tensor:
    """Smoothstep of the distance [..] of crop points `uv` [.., 2] (fractions of the side) to the
    crop's edge over `feather`: 0 on and outside the edge, 1 deeper inside than `feather`."""
    inside = torch.minimum(uv, 1 - uv).amin(dim=-1)
    t = (inside / feather).clamp(0, 1) if feather > 0 else (inside > 0).to(uv.dtype)
    return t * t * (3 - 2 * t)


__all__ = ["FEATHER", "paste", "seam_mask"]
