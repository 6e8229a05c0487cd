"""Where the faces in a photo are: the detector interface and its dlib implementation.

Alignment needs four points per face (the two eye centres and the two mouth corners, FFHQ's
choice); anything that finds them can be plugged in as a `LandmarkDetector`. The default,
`DlibDetector`, is dlib's HOG face detector followed by dlib's 68-point shape predictor (the
model FFHQ itself was aligned with), from the optional `align` extra
(`pip install "lbrgm-fast[align]"`). That model was trained on iBUG 300-W, whose licence
excludes commercial use: commercial users should plug in a detector of their own.

Coordinates are continuous pixel coordinates: pixel (row i, column j) covers [j, j+1) x [i, i+1),
so its centre is (j + 0.5, i + 0.5). Points are (x, y).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lbrgm_fast.errors import UserError

EXTRA_HINT = 'pip install "lbrgm-fast[align]"'


class AlignmentUnavailable(UserError):
    """The landmark detector cannot run here (the `align` extra or its model file is missing)."""


@dataclass(frozen=True)
class FacePoints:
    """The four points FFHQ's alignment uses, as (x, y) in photo pixels.

    "Left" and "right" are as seen in the photo (the subject's right eye is `eye_left`).
    """

    eye_left: np.ndarray  # [2]
    eye_right: np.ndarray  # [2]
    mouth_left: np.ndarray  # [2]
    mouth_right: np.ndarray  # [2]

    @classmethod
    def from_68(cls, landmarks: np.ndarray) -> FacePoints:
        """From the 68 iBUG 300-W landmarks [68, 2]: eye centres are the means of points 36-41
        and 42-47, the mouth corners are points 48 and 54."""
        return cls(landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[48].copy(), landmarks[54].copy())

    def to_list(self) -> dict[str, list[float]]:
        return {name: [float(v) for v in getattr(self, name)] for name in ("eye_left", "eye_right", "mouth_left", "mouth_right")}


@dataclass(frozen=True)
class DetectedFace:
    """One face a detector found in a photo.

    Attributes:
        box: (left, top, right, bottom) in photo pixels.
        score: The detector's confidence (its own scale; higher is surer).
        points: The four alignment points.
        landmarks: All landmarks the detector gives ([68, 2] for dlib's), or None.
    """

    box: tuple[float, float, float, float]
    score: float
    points: FacePoints
    landmarks: np.ndarray | None = None


class LandmarkDetector(Protocol):
    """Finds the faces in a photo. `photo` is uint8 [H, W, 3] RGB; faces come left to right."""

    def detect(self, photo: np.ndarray) -> list[DetectedFace]: ...


def _model_folder() -> Path:
    """face-recognition-models' model folder, found without importing the package (its
    `__init__` needs setuptools' pkg_resources, which recent Pythons no longer have)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AlignmentUnavailable(f"face alignment needs dlib's landmark model (package face-recognition-models): {EXTRA_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def plausible(points: FacePoints, box: tuple[float, float, float, float]) -> bool:
    """Whether four points look like a face: eyes apart by at least a quarter of the box width,
    the mouth below the eyes (eye-to-mouth within 45 degrees of the eye line's normal) at 0.5-1.6x
    the eye distance. Catches a shape predictor fitted to something that is not a face."""
    eye_to_eye = points.eye_right - points.eye_left
    eye_to_mouth = (points.mouth_left + points.mouth_right) / 2 - (points.eye_left + points.eye_right) / 2
    across, down = float(np.hypot(*eye_to_eye)), float(np.hypot(*eye_to_mouth))
    if across < 0.25 * (box[2] - box[0]) or down == 0:
        return False
    normal = np.array([-eye_to_eye[1], eye_to_eye[0]]) / across  # points down the face
    return float(normal @ eye_to_mouth) / down > np.cos(np.pi / 4) and 0.5 <= down / across <= 1.6


class DlibDetector:
    """dlib's HOG face detector, confirmed by dlib's CNN face detector, then 68 landmarks.

    Args:
        min_score: Least HOG detection score kept (dlib's own threshold is 0).
        min_size: Least face box side, in photo pixels.
        confirm: Run the CNN (MMOD) detector on a crop around each HOG face and keep only those
            it also finds. HOG alone takes round, face-sized things for faces (the mission patch
            on the suit in scikit-image's astronaut photo scores 0.1-0.3, the face 0.5-1.5); the
            CNN does not, at about 0.15 s per candidate on a CPU.
        detect_side: HOG runs on the photo scaled by min(2, detect_side / longer side): small
            photos are upsampled twice (faces from 40 px), large ones downsampled so that
            detection costs at most a `detect_side`-pixel photo (faces from 80 px at that scale).

    Raises AlignmentUnavailable when dlib or the model files are missing.
    """

    #: The CNN check sees a square crop of this many box sides around the face, scaled so that
    #: the box is `CONFIRM_BOX` pixels (its detection window is 80 pixels).
    CONFIRM_CONTEXT = 2.0
    CONFIRM_BOX = 90

    def __init__(self, min_score: float = 0.0, min_size: float = 40, confirm: bool = True, detect_side: int = 2048) -> None:
        try:
            import dlib
        except ImportError:
            raise AlignmentUnavailable(f"face alignment needs dlib: {EXTRA_HINT}") from None
        folder = _model_folder()
        predictor = folder / "shape_predictor_68_face_landmarks.dat"
        cnn = folder / "mmod_human_face_detector.dat"
        for path in (predictor, cnn):
            if not path.is_file():
                raise AlignmentUnavailable(f"{path} is missing: reinstall the landmark models with {EXTRA_HINT}")
        self._dlib = dlib
        self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor))
        self._cnn = dlib.cnn_face_detection_model_v1(str(cnn)) if confirm else None
        self.min_score, self.min_size, self.detect_side = min_score, min_size, detect_side

    def detect(self, photo: np.ndarray) -> list[DetectedFace]:
        """All faces in `photo` (uint8 [H, W, 3]) that pass every filter, left to right."""
        faces = []
        for box, score in self._candidates(photo):
            if box[2] - box[0] < self.min_size or score < self.min_score:
                continue
            if self._cnn is not None and not self._confirmed(photo, box):
                continue
            landmarks = self._landmarks(photo, box)
            points = FacePoints.from_68(landmarks)
            if plausible(points, box):
                faces.append(DetectedFace(box, score, points, landmarks))
        return sorted(faces, key=lambda f: f.box[0] + f.box[2])

    def _candidates(self, photo: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """HOG detections as (box in photo pixels, score), on the photo scaled for detection."""
        scale = min(2.0, self.detect_side / max(photo.shape[:2]))
        rects, scores, _ = self._hog.run(_resized(photo, scale), 0, 0.0)
        return [((r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale), float(s)) for r, s in zip(rects, scores)]

    def _confirmed(self, photo: np.ndarray, box: tuple[float, float, float, float]) -> bool:
        """Whether the CNN detector finds a face centred inside `box` in a crop around it."""
        side = box[2] - box[0]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = side * self.CONFIRM_CONTEXT / 2
        x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
        x1, y1 = min(int(np.ceil(cx + half)), photo.shape[1]), min(int(np.ceil(cy + half)), photo.shape[0])
        scale = self.CONFIRM_BOX / side
        crop = _resized(np.ascontiguousarray(photo[y0:y1, x0:x1]), scale)
        for found in self._cnn(crop, 0):
            r = found.rect
            fx, fy = x0 + (r.left() + r.right() + 1) / 2 / scale, y0 + (r.top() + r.bottom() + 1) / 2 / scale
            if box[0] <= fx <= box[2] and box[1] <= fy <= box[3]:
                return True
        return False

    def _landmarks(self, photo: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """The 68 landmarks [68, 2] (continuous coordinates) of the face in `box`."""
        rect = self._dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = self._predictor(photo, rect)
        return np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], dtype=np.float64)


def _resized(photo: np.ndarray, scale: float) -> np.ndarray:
    """`photo` (uint8 [H, W, 3]) resized by `scale` (Lanczos: antialiased when shrinking)."""
    if scale == 1:
        return photo
    from PIL import Image

    h, w = photo.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


__all__ = ["AlignmentUnavailable", "DetectedFace", "DlibDetector", "FacePoints", "LandmarkDetector", "plausible"]
