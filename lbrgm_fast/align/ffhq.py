"""FFHQ's alignment: from four face points to an oriented square crop, and the crop itself.

The procedure is the one the FFHQ data set was made with (NVlabs/ffhq-dataset,
`recreate_aligned_images`), summarised in docs/alignment.md:

1. The eye centres and the mouth corners give an oriented square (the *quad*) around the face:
   its side is the larger of 4x the eye distance and 3.6x the eye-to-mouth distance, it is
   rotated to level the eyes, and centred a tenth of the way from the eyes to the mouth.
2. Shrink: a photo much larger than the output is first reduced by an integer factor.
3. Crop to the quad with a border; 4. where the quad leaves the photo, reflect-pad, blur the
   padding and fade it to the median colour; 5. resample the quad to the output square.

`FaceTransform` keeps the quad in the original photo's coordinates, so the crop can be undone
exactly (paste.py). Step 5 differs from the original only in its resampling: FFHQ samples the
quad at 4096 px and resizes to the output with PIL's antialiasing filter; here the quad is
sampled bilinearly at the smallest multiple k*size of the output (k <= 4) not coarser than the
photo's pixels, then averaged over k x k blocks, which is as sharp and far cheaper.

Images are float tensors [3, H, W] in [0, 1]; points are (x, y) in continuous pixel
coordinates (pixel (i, j) covers [j, j+1) x [i, i+1)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lbrgm_fast.align.landmarks import FacePoints

#: Most samples per output pixel along each axis in the final resampling.
MAX_SUPERSAMPLE = 4
TRANSFORM_VERSION = 1


def quad_side(quad: np.ndarray) -> float:
    """The side of an FFHQ quad [4, 2] (top-left, bottom-left, bottom-right, top-right) in photo pixels."""
    return float(np.hypot(*(quad[3] - quad[0])))


@dataclass(frozen=True)
class FaceTransform:
    """Where an aligned crop comes from: the quad's corners in the photo and the crop's size.

    The corners are the photo points of the crop's top-left, bottom-left, bottom-right and
    top-right corners (FFHQ's order). The map from crop to photo is affine:
    photo = quad[0] + (u / size) * (quad[3] - quad[0]) + (v / size) * (quad[1] - quad[0])
    for a crop point (u, v).

    Attributes:
        quad: [4, 2] corners in photo pixels.
        size: The aligned crop's side in pixels.
        photo_size: (width, height) of the photo.
    """

    quad: np.ndarray
    size: int
    photo_size: tuple[int, int]

    @property
    def side(self) -> float:
        """The quad's side in photo pixels: how many photo pixels the crop's side spans."""
        return quad_side(self.quad)

    def matrix(self) -> np.ndarray:
        """[2, 3] affine map from crop coordinates (u, v, 1) to photo coordinates (x, y)."""
        q = self.quad
        return np.stack([(q[3] - q[0]) / self.size, (q[1] - q[0]) / self.size, q[0]], axis=1)

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Crop points [N, 2] -> photo points [N, 2]."""
        m = self.matrix()
        return points @ m[:, :2].T + m[:, 2]

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Photo points [N, 2] -> crop points [N, 2]."""
        m = self.matrix()
        return (points - m[:, 2]) @ np.linalg.inv(m[:, :2]).T

    def to_dict(self) -> dict:
        return {
            "version": TRANSFORM_VERSION,
            "size": self.size,
            "photo_size": list(self.photo_size),
            "quad": self.quad.tolist(),
            "crop_to_photo": self.matrix().tolist(),
            "coordinates": "continuous pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1)",
            "quad_order": "the crop's top-left, bottom-left, bottom-right, top-right corners",
        }

    @classmethod
    def from_dict(cls, data: dict) -> FaceTransform:
        if data.get("version") != TRANSFORM_VERSION:
            raise ValueError(f"unknown face transform version {data.get('version')!r}")
        return cls(np.asarray(data["quad"], dtype=np.float64), int(data["size"]), tuple(data["photo_size"]))  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, text: str) -> FaceTransform:
        return cls.from_dict(json.loads(text))


def ffhq_quad(points: FacePoints) -> np.ndarray:
    """FFHQ's oriented square [4, 2] (top-left, bottom-left, bottom-right, top-right) for a face."""
    eye_avg = (points.eye_left + points.eye_right) / 2
    eye_to_eye = points.eye_right - points.eye_left
    eye_to_mouth = (points.mouth_left + points.mouth_right) / 2 - eye_avg
    # The crop's x axis: the eye line, averaged with the normal of the eye-to-mouth line.
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])  # x turned 90 degrees: down the face
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def face_transform(points: FacePoints, size: int, photo_size: tuple[int, int]) -> FaceTransform:
    """The transform of the `size`-pixel FFHQ crop of the face at `points` in a photo of
    `photo_size` (width, height)."""
    return FaceTransform(ffhq_quad(points), size, photo_size)


def warp_to_crop(photo: torch.Tensor, transform: FaceTransform) -> torch.Tensor:
    """The aligned crop [3, size, size] of `photo` [3, H, W] (FFHQ's steps 2-5)."""
    size = transform.size
    side = transform.side
    shrink = max(int(side / size * 0.5), 1)
    border = max(round(side / shrink * 0.1), 3)
    # Crop (in photo pixels, with the border at the shrunk scale), then shrink the crop.
    quad = transform.quad
    x0, y0 = (max(math.floor(v) - border * shrink, 0) for v in quad.min(0))
    x1 = min(math.ceil(quad[:, 0].max()) + border * shrink, photo.shape[2])
    y1 = min(math.ceil(quad[:, 1].max()) + border * shrink, photo.shape[1])
    work = photo[:, y0:y1, x0:x1]
    if shrink > 1:
        shape = (max(round(work.shape[1] / shrink), 1), max(round(work.shape[2] / shrink), 1))
        work = F.interpolate(work[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
    # The quad in the work image's coordinates (exact: each axis scaled by its own ratio).
    scale = np.array([work.shape[2] / (x1 - x0), work.shape[1] / (y1 - y0)])
    quad = (quad - [x0, y0]) * scale
    work, quad = _pad_outside(work, quad, border)
    return _sample_quad(work, quad, size)


def _pad_outside(work: torch.Tensor, quad: np.ndarray, border: int) -> tuple[torch.Tensor, np.ndarray]:
    """FFHQ's step 4: where the quad (plus border) leaves `work` [3, h, w], reflect-pad, blur
    the padding (more towards its outer edge) and fade it to the median colour. Returns the
    padded image and the quad in its coordinates."""
    h, w = work.shape[1:]
    side = quad_side(quad)
    lo, hi = np.floor(quad.min(0)), np.ceil(quad.max(0))
    pad = [max(int(-lo[0]) + border, 0), max(int(-lo[1]) + border, 0), max(int(hi[0]) - w + border, 0), max(int(hi[1]) - h + border, 0)]
    if max(pad) <= border - 4:
        return work, quad
    pad = [max(p, round(side * 0.3)) for p in pad]  # left, top, right, bottom
    padded = _reflect_pad(work, pad)
    ph, pw = padded.shape[1:]
    xs = torch.arange(pw, dtype=torch.float32)
    ys = torch.arange(ph, dtype=torch.float32)
    # 1 at the padded image's outer edge, 0 where the padding meets the photo, < 0 inside it.
    mask_x = 1 - torch.minimum(xs / pad[0], (pw - 1 - xs) / pad[2])
    mask_y = 1 - torch.minimum(ys / pad[1], (ph - 1 - ys) / pad[3])
    mask = torch.maximum(mask_x[None, :], mask_y[:, None])[None]  # [1, ph, pw]
    padded = padded + (_blur(padded, side * 0.02) - padded) * (mask * 3 + 1).clamp(0, 1)
    median = padded.flatten(1).median(dim=1).values[:, None, None]
    padded = padded + (median - padded) * mask.clamp(0, 1)
    return padded, quad + [pad[0], pad[1]]


def _reflect_pad(image: torch.Tensor, pad: list[int]) -> torch.Tensor:
    """Reflect-pad [3, h, w] by (left, top, right, bottom), however large the padding (torch's
    reflection needs less than the image's size per call, so large pads are done in rounds)."""
    left, top, right, bottom = pad
    while left or top or right or bottom:
        h, w = image.shape[1:]
        step = [min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1)]
        if max(step) == 0:  # a 1-pixel-wide image: nothing to reflect, repeat it
            return F.pad(image[None], (left, right, top, bottom), mode="replicate")[0]
        image = F.pad(image[None], tuple(step), mode="reflect")[0]
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return image


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [3, h, w] with standard deviation `sigma` pixels (reflecting edges).

    A wide blur is done on a copy shrunk by ~sigma/2 and brought back bilinearly: the same
    picture for a few percent of the cost (FFHQ's padding blur reaches sigma 80 at 1024 px).
    """
    h, w = image.shape[1:]
    factor = max(int(sigma / 2), 1)
    small = image
    if factor > 1:
        small = F.interpolate(image[None], size=(max(h // factor, 1), max(w // factor, 1)), mode="area")[0]
    s = sigma / factor
    radius = min(max(int(4 * s + 0.5), 1), min(small.shape[1:]) - 1)
    if radius < 1:
        return image
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / s) ** 2)
    taps = (taps / taps.sum()).to(image.dtype)
    out = F.pad(small[:, None], (radius, radius, radius, radius), mode="reflect")  # [3, 1, h', w']
    out = F.conv2d(out, taps.view(1, 1, 1, -1))
    out = F.conv2d(out, taps.view(1, 1, -1, 1))[:, 0]
    if factor > 1:
        out = F.interpolate(out[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def _sample_quad(image: torch.Tensor, quad: np.ndarray, size: int) -> torch.Tensor:
    """Resample the quad of `image` [3, h, w] to [3, size, size]: bilinear at k*size, then the
    mean of k x k blocks, k the smallest that is not coarser than the image's pixels."""
    side = quad_side(quad)
    k = min(max(math.ceil(side / size), 1), MAX_SUPERSAMPLE)
    n = k * size
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # sample centres along a crop side
    q = torch.from_numpy(quad)
    points = q[0] + t[None, :, None] * (q[3] - q[0]) + t[:, None, None] * (q[1] - q[0])  # [n, n, 2] (x, y)
    h, w = image.shape[1:]
    grid = points / torch.tensor([w, h], dtype=torch.float64) * 2 - 1
    out = F.grid_sample(image[None], grid[None].to(image.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    if k > 1:
        out = F.avg_pool2d(out, k)
    return out[0].clamp(0, 1)


__all__ = ["FaceTransform", "face_transform", "ffhq_quad", "warp_to_crop"]
