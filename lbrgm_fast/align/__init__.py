"""Raw photos in, restored photos out: FFHQ face alignment and paste-back.

    from lbrgm_fast.align import align_faces
    faces = align_faces(photo, 1024)               # photo: [3, H, W] in [0, 1]
    restored = rec.run(faces[0].image[None], operator).images[0]
    photo = faces[0].paste(restored, into=photo)   # the photo with the face restored

Detection needs the optional `align` extra (dlib and its 68-point model, non-commercial); the
alignment and the paste are plain torch. See docs/alignment.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lbrgm_fast.align.ffhq import FaceTransform, face_transform, warp_to_crop
from lbrgm_fast.align.landmarks import AlignmentUnavailable, DetectedFace, DlibDetector, FacePoints, LandmarkDetector
from lbrgm_fast.align import paste as pasting
from lbrgm_fast.align.paste import FEATHER, seam_mask


@dataclass(frozen=True)
class AlignedFace:
    """One face of a photo, aligned as FFHQ's faces are.

    Attributes:
        image: The aligned crop [3, size, size] in [0, 1].
        transform: Where the crop comes from (undo it with `paste`).
        face: What the detector found (box, score, landmarks).
    """

    image: torch.Tensor
    transform: FaceTransform
    face: DetectedFace

    def paste(self, restored: torch.Tensor, into: torch.Tensor, feather: float = FEATHER) -> torch.Tensor:
        """`into` (the photo, [3, H, W]) with `restored` ([3, n, n], any n) pasted back in
        place of this crop, feathered over `feather` of the crop's side; pixels outside the
        pasted region are the photo's own."""
        return pasting.paste(restored, into, self.transform, feather)


def photo_array(photo: torch.Tensor) -> np.ndarray:
    """A [3, H, W] float photo in [0, 1] as the uint8 [H, W, 3] array detectors read."""
    return (photo.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def align_faces(image: torch.Tensor, size: int, detector: LandmarkDetector | None = None) -> list[AlignedFace]:
    """Every face of `image` ([3, H, W] in [0, 1]), aligned to a `size`-pixel FFHQ crop, left to right.

    `detector` defaults to `DlibDetector()` (raises AlignmentUnavailable without the extra).
    """
    detector = detector or DlibDetector()
    return [align_face(image, face, size) for face in detector.detect(photo_array(image))]


def align_face(image: torch.Tensor, face: DetectedFace, size: int) -> AlignedFace:
    """The `size`-pixel FFHQ crop of one detected face of `image` ([3, H, W] in [0, 1])."""
    transform = face_transform(face.points, size, (image.shape[2], image.shape[1]))
    return AlignedFace(warp_to_crop(image, transform), transform, face)


__all__ = [
    "AlignedFace",
    "AlignmentUnavailable",
    "DetectedFace",
    "DlibDetector",
    "FacePoints",
    "FaceTransform",
    "LandmarkDetector",
    "align_face",
    "align_faces",
    "photo_array",
    "seam_mask",
]
